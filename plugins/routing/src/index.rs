//! Text similarity between a task and each agent, by BM25 over per-agent "documents" (the
//! agent's capability names, whole and split at `_`). The index is updated incrementally
//! (document frequencies adjust as documents gain terms or leave), so nothing is recomputed
//! over the whole fleet.

use std::collections::HashMap;

/// How many distinct terms an agent's document keeps; later terms only raise existing counts.
const MAX_DOC_TERMS: usize = 512;
const K1: f64 = 1.2;
const B: f64 = 0.75;

const STOPWORDS: [&str; 24] = [
    "a", "an", "and", "the", "of", "to", "in", "on", "for", "with", "it", "is", "be", "this", "that", "then", "by",
    "at", "as", "or", "from", "into", "its", "our",
];

/// Lower-case words, without stop words.
pub(crate) fn tokenize(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .collect()
}

/// A capability name as terms: the whole name and its `_`-separated parts.
pub(crate) fn capability_terms(capability: &str) -> Vec<String> {
    let whole = capability.to_lowercase();
    let mut terms: Vec<String> = whole
        .split(['_', '-'])
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    if terms.len() != 1 {
        terms.push(whole);
    }
    terms
}

#[derive(Debug, Default)]
struct Doc {
    terms: HashMap<String, u32>,
    len: u64,
}

/// BM25 index, one document per agent.
#[derive(Debug, Default)]
pub(crate) struct TextIndex {
    docs: HashMap<String, Doc>,
    df: HashMap<String, u32>,
    total_len: u64,
}

impl TextIndex {
    #[cfg(test)]
    pub(crate) fn contains(&self, agent: &str) -> bool {
        self.docs.contains_key(agent)
    }

    /// Adds terms to an agent's document (creating it).
    pub(crate) fn add(&mut self, agent: &str, terms: impl IntoIterator<Item = String>) {
        let doc = self.docs.entry(agent.to_owned()).or_default();
        for term in terms {
            if let Some(count) = doc.terms.get_mut(&term) {
                *count += 1;
            } else if doc.terms.len() < MAX_DOC_TERMS {
                *self.df.entry(term.clone()).or_default() += 1;
                doc.terms.insert(term, 1);
            } else {
                continue;
            }
            doc.len += 1;
            self.total_len += 1;
        }
    }

    pub(crate) fn remove(&mut self, agent: &str) {
        if let Some(doc) = self.docs.remove(agent) {
            self.total_len -= doc.len;
            for term in doc.terms.keys() {
                if let Some(n) = self.df.get_mut(term) {
                    *n -= 1;
                    if *n == 0 {
                        self.df.remove(term);
                    }
                }
            }
        }
    }

    /// Inverse document frequency; `None` for a term no document has.
    pub(crate) fn idf(&self, term: &str) -> Option<f64> {
        let df = f64::from(*self.df.get(term)?);
        let n = self.docs.len() as f64;
        Some((1.0 + (n - df + 0.5) / (df + 0.5)).ln())
    }

    /// BM25 of `query` against `agent`'s document (0 when it has none).
    pub(crate) fn score(&self, agent: &str, query: &[(String, f64)]) -> f64 {
        let Some(doc) = self.docs.get(agent) else { return 0.0 };
        let avg = if self.docs.is_empty() {
            1.0
        } else {
            (self.total_len as f64 / self.docs.len() as f64).max(1.0)
        };
        let norm = K1 * (1.0 - B + B * doc.len as f64 / avg);
        query
            .iter()
            .filter_map(|(term, idf)| {
                let tf = f64::from(*doc.terms.get(term)?);
                Some(idf * tf * (K1 + 1.0) / (tf + norm))
            })
            .sum()
    }

    /// The query's terms with their idf, dropping terms no agent has.
    pub(crate) fn weigh(&self, terms: &[String]) -> Vec<(String, f64)> {
        let mut seen = std::collections::HashSet::new();
        terms
            .iter()
            .filter(|t| seen.insert(t.as_str()))
            .filter_map(|t| self.idf(t).map(|idf| (t.clone(), idf)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rarer_matching_terms_score_higher() {
        let mut index = TextIndex::default();
        index.add("rust-dev", capability_terms("rust_development"));
        index.add("go-dev", capability_terms("go_development"));
        index.add("writer", capability_terms("documentation"));
        let query = index.weigh(&tokenize("Fix the Rust development build"));
        let rust = index.score("rust-dev", &query);
        let go = index.score("go-dev", &query);
        assert!(rust > go && go > 0.0, "{rust} {go}");
        assert_eq!(index.score("writer", &query), 0.0);
        index.remove("rust-dev");
        assert!(!index.contains("rust-dev"));
        assert_eq!(index.idf("rust"), None);
    }
}
