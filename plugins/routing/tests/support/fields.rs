//! The vocabulary world: a harder routing simulation, shared by the bench and the tests.
//!
//! Five fields of work, each with 24 words of its own (no word is shared between fields). An
//! agent declares only the first two words of its field as capabilities; a task is written
//! mostly in the other 22, so a router that reads capability names alone finds the right field
//! for few tasks, and one that learns which words each agent succeeds on can find it for almost
//! all. Each field has three agents, with hidden success rates 0.9, 0.6 and 0.3 on their own
//! field's tasks, and 0.05 on any other field's. Agent ids (`a0`..`a14`) say nothing of field or
//! skill, and the order of fields and skills among them is shuffled, so the expert is not always
//! registered first.
//!
//! Everything comes from one seeded SplitMix64 stream. A task carries its own outcome draw, made
//! when the task is made, so every policy faces the same luck: giving the task to an agent
//! succeeds when the draw is below that agent's rate for the task's field.

#![allow(dead_code)]

/// The fields of work, by index.
pub(crate) const FIELDS: [&str; 5] = ["database", "frontend", "security", "deployment", "parsing"];

/// How many words at the head of each field's vocabulary are declared: its agents' capabilities.
pub(crate) const DECLARED: usize = 2;

/// Each field's words, indexed like [`FIELDS`]: the first [`DECLARED`] are the capability names
/// its agents register with, the rest are undeclared.
pub(crate) const VOCABULARY: [[&str; 24]; 5] = [
    [
        "database",
        "sql",
        "schema",
        "index",
        "query",
        "migration",
        "table",
        "transaction",
        "replica",
        "postgres",
        "column",
        "join",
        "shard",
        "backup",
        "vacuum",
        "deadlock",
        "cursor",
        "constraint",
        "trigger",
        "rollback",
        "partition",
        "tablespace",
        "sequence",
        "normalization",
    ],
    [
        "frontend",
        "css",
        "layout",
        "button",
        "component",
        "browser",
        "react",
        "stylesheet",
        "viewport",
        "animation",
        "modal",
        "dropdown",
        "typography",
        "responsive",
        "accessibility",
        "dom",
        "widget",
        "tooltip",
        "navbar",
        "flexbox",
        "hydration",
        "rendering",
        "sidebar",
        "carousel",
    ],
    [
        "security",
        "authentication",
        "vulnerability",
        "encryption",
        "firewall",
        "password",
        "certificate",
        "sandbox",
        "phishing",
        "malware",
        "audit",
        "exploit",
        "sanitize",
        "csrf",
        "xss",
        "permissions",
        "secrets",
        "oauth",
        "intrusion",
        "hashing",
        "tls",
        "credential",
        "cve",
        "pentest",
    ],
    [
        "deployment",
        "kubernetes",
        "docker",
        "container",
        "rollout",
        "pipeline",
        "helm",
        "cluster",
        "terraform",
        "canary",
        "staging",
        "release",
        "pod",
        "ingress",
        "autoscaling",
        "provisioning",
        "artifact",
        "registry",
        "ansible",
        "nginx",
        "uptime",
        "downtime",
        "hotfix",
        "infrastructure",
    ],
    [
        "parsing",
        "grammar",
        "lexer",
        "tokenizer",
        "syntax",
        "ast",
        "regex",
        "json",
        "yaml",
        "xml",
        "parser",
        "recursive",
        "ambiguity",
        "precedence",
        "backtracking",
        "combinator",
        "delimiter",
        "escape",
        "unicode",
        "utf8",
        "whitespace",
        "lookahead",
        "serialization",
        "bnf",
    ],
];

/// Hidden success rates on the agent's own field, one agent per level in each field (index 0 is
/// the expert).
pub(crate) const SKILLS: [f64; 3] = [0.9, 0.6, 0.3];

/// Hidden success rate of any agent on another field's task.
pub(crate) const OFF_FIELD_RATE: f64 = 0.05;

/// How many agents the world has: one per field and skill level.
pub(crate) const AGENTS: usize = FIELDS.len() * SKILLS.len();

/// Distinct words of the task's own field in each description.
pub(crate) const FIELD_WORDS: usize = 4;

/// Words from other fields' undeclared vocabularies in each description.
pub(crate) const NOISE_WORDS: usize = 2;

/// The chance that one of a task's field words is replaced by one of the field's declared words.
pub(crate) const DECLARED_WORD_CHANCE: f64 = 0.15;

/// SplitMix64: a small, fast, seeded generator (the same as the bench's `World`).
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator starting from `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform draw in `[0, 1)`.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform index below `n`, which must be positive.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "Rng::below(0)");
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// One agent of the world.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Agent {
    /// Its id, `a0`..`a14`, in registration order.
    pub(crate) id: String,
    /// The index of its field in [`FIELDS`].
    pub(crate) field: usize,
    /// The index of its skill level in [`SKILLS`] (0: the expert).
    pub(crate) skill: usize,
}

/// One task, with the world's luck for it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Task {
    /// The index of the field it belongs to in [`FIELDS`].
    pub(crate) field: usize,
    /// Six words separated by spaces: four of its field, two from other fields.
    pub(crate) description: String,
    /// A uniform draw in `[0, 1)`: an agent succeeds when the draw is below its rate.
    pub(crate) draw: f64,
}

/// What came of giving one task to one agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Routed {
    /// The agent belongs to the task's field.
    pub(crate) right_field: bool,
    /// The agent succeeded.
    pub(crate) success: bool,
}

/// The world: its agents and the random stream tasks are drawn from.
#[derive(Debug, Clone)]
pub(crate) struct FieldsWorld {
    rng: Rng,
    agents: Vec<Agent>,
}

impl FieldsWorld {
    /// A world whose agent order and tasks all follow from `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut slots: Vec<(usize, usize)> = (0..FIELDS.len())
            .flat_map(|field| (0..SKILLS.len()).map(move |skill| (field, skill)))
            .collect();
        rng.shuffle(&mut slots);
        let agents = slots
            .into_iter()
            .enumerate()
            .map(|(i, (field, skill))| Agent {
                id: format!("a{i}"),
                field,
                skill,
            })
            .collect();
        Self { rng, agents }
    }

    /// The agents, in registration order (an agent's index is its position here).
    pub(crate) fn agents(&self) -> &[Agent] {
        &self.agents
    }

    /// What to register, in order: each agent's id and capabilities (its field's declared words).
    pub(crate) fn registrations(&self) -> Vec<(String, Vec<String>)> {
        self.agents
            .iter()
            .map(|agent| {
                let capabilities = VOCABULARY[agent.field][..DECLARED]
                    .iter()
                    .map(|word| (*word).to_owned())
                    .collect();
                (agent.id.clone(), capabilities)
            })
            .collect()
    }

    /// The index of the agent with this id, if it is one of the world's.
    pub(crate) fn agent_index(&self, id: &str) -> Option<usize> {
        self.agents.iter().position(|agent| agent.id == id)
    }

    /// The next `n` tasks of the world's stream (later calls continue it).
    pub(crate) fn tasks(&mut self, n: usize) -> Vec<Task> {
        (0..n).map(|_| self.task()).collect()
    }

    /// The next task: a uniformly random field; four distinct undeclared words of it, one of them
    /// replaced by a declared word with chance [`DECLARED_WORD_CHANCE`]; two distinct undeclared
    /// words of other random fields; shuffled; then the outcome draw.
    fn task(&mut self) -> Task {
        let field = self.rng.below(FIELDS.len());
        let vocabulary = &VOCABULARY[field];
        let mut undeclared: Vec<usize> = (DECLARED..vocabulary.len()).collect();
        let mut words: Vec<&str> = Vec::with_capacity(FIELD_WORDS + NOISE_WORDS);
        for k in 0..FIELD_WORDS {
            let pick = k + self.rng.below(undeclared.len() - k);
            undeclared.swap(k, pick);
            words.push(vocabulary[undeclared[k]]);
        }
        if self.rng.next_f64() < DECLARED_WORD_CHANCE {
            let slot = self.rng.below(FIELD_WORDS);
            words[slot] = vocabulary[self.rng.below(DECLARED)];
        }
        while words.len() < FIELD_WORDS + NOISE_WORDS {
            let other = (field + 1 + self.rng.below(FIELDS.len() - 1)) % FIELDS.len();
            let word = VOCABULARY[other][DECLARED + self.rng.below(VOCABULARY[other].len() - DECLARED)];
            if !words.contains(&word) {
                words.push(word);
            }
        }
        self.rng.shuffle(&mut words);
        Task {
            field,
            description: words.join(" "),
            draw: self.rng.next_f64(),
        }
    }

    /// The field (index in [`FIELDS`]) of agent `agent`.
    pub(crate) fn field_of_agent(&self, agent: usize) -> usize {
        self.agents[agent].field
    }

    /// Agent `agent`'s hidden success rate on tasks of field `field`.
    pub(crate) fn rate(&self, agent: usize, field: usize) -> f64 {
        let agent = &self.agents[agent];
        if agent.field == field {
            SKILLS[agent.skill]
        } else {
            OFF_FIELD_RATE
        }
    }

    /// Whether agent `agent` succeeds at `task`.
    pub(crate) fn success(&self, agent: usize, task: &Task) -> bool {
        task.draw < self.rate(agent, task.field)
    }

    /// The index of field `field`'s expert (the agent with rate 0.9 there).
    pub(crate) fn oracle_agent(&self, field: usize) -> usize {
        self.agents
            .iter()
            .position(|agent| agent.field == field && agent.skill == 0)
            .expect("every field has an expert")
    }

    /// What comes of giving `task` to agent `agent`.
    pub(crate) fn route(&self, agent: usize, task: &Task) -> Routed {
        Routed {
            right_field: self.field_of_agent(agent) == task.field,
            success: self.success(agent, task),
        }
    }

    /// Runs a policy over `tasks` in order: `policy` names an agent (by index) for each task; one
    /// [`Routed`] per task comes back. A learning policy tells its learner the outcome itself, from
    /// [`FieldsWorld::success`].
    pub(crate) fn run_policy(&self, tasks: &[Task], mut policy: impl FnMut(&Task) -> usize) -> Vec<Routed> {
        tasks.iter().map(|task| self.route(policy(task), task)).collect()
    }

    /// [`FieldsWorld::run_policy`] for a policy that awaits (one that asks an orchestrator).
    pub(crate) async fn run_policy_async(
        &self,
        tasks: &[Task],
        mut policy: impl AsyncFnMut(&Task) -> usize,
    ) -> Vec<Routed> {
        let mut routed = Vec::with_capacity(tasks.len());
        for task in tasks {
            let agent = policy(task).await;
            routed.push(self.route(agent, task));
        }
        routed
    }
}

/// The share of `routed` given to the right field, and the share that succeeded (0 when empty).
pub(crate) fn rates(routed: &[Routed]) -> (f64, f64) {
    if routed.is_empty() {
        return (0.0, 0.0);
    }
    let n = routed.len() as f64;
    let right = routed.iter().filter(|r| r.right_field).count() as f64;
    let success = routed.iter().filter(|r| r.success).count() as f64;
    (right / n, success / n)
}
