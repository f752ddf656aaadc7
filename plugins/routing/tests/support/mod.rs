//! What the routing tests share. A test file includes it with `mod support;`; the bench includes
//! the files it needs by path (`#[path = "../tests/support/fields.rs"] mod fields;`).

pub(crate) mod fields;
