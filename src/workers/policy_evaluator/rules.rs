//! Policy rules: the validator the policies API calls before saving, and their evaluation.
//!
//! ```json
//! {"when": {"topics": ["episode.analyzed", "system.*"]},
//!  "if":   {"all": [{"field": "data.analysis.sentiment.label", "op": "eq", "value": "negative"},
//!                   {"not": {"field": "data.tags", "op": "contains", "value": "test"}}]},
//!  "then": [{"notify": {"channel": "telegram", "to": "12345", "template": "Bad news: {{data.episode_id}}"}},
//!           {"enqueue": {"worker": "episode_analyzer", "args": {"episode_id": "..."}}},
//!           {"publish": {"topic": "ops.escalated", "data": {"level": 2}}},
//!           {"set_state": {"system": 3, "merge": {"alert": true}}}]}
//! ```
//! - `if` is optional (absent = always). A condition is exactly one of `{"all":[c,..]}`,
//!   `{"any":[c,..]}`, `{"not":c}`, or a comparison `{"field","op","value"}` whose field is
//!   `topic`, `event_id`, `data` or a dotted path below `data` (array indexes are numbers).
//! - Ops: `eq ne gt gte lt lte in contains matches exists`. Evaluation is three-valued: a
//!   missing field or a type mismatch is *unknown*, `not` of unknown is unknown, and only a
//!   definite *true* triggers the policy, so nothing unknown ever evaluates to true.
//! - Every error names its JSON path from `rules` (`rules.if.all[1].op`).
//! - A complexity budget ([`PoliciesConfig`]) caps the conditions, their nesting, the
//!   `matches` patterns and their total size, and the actions. It is counted while walking the
//!   document, before any pattern is compiled, so an over-budget rule costs no more to refuse
//!   than a rule at the budget costs to accept.
//! - `enqueue` may name only the workers passed as enqueueable: those of tenant scope
//!   ([`crate::jobs::Scope::Tenant`]).

use regex::Regex;
use serde_json::{Map, Value};

use super::template::{self, Template};
pub use crate::config::PoliciesConfig;
use crate::events::topic::{Filter, Filters};

/// Most bytes of all `notify` templates of one policy together (each is at most
/// [`template::MAX_TEMPLATE_BYTES`]): a policy's messages cost bounded work per evaluation.
pub const MAX_TEMPLATES_BYTES: usize = 4 * template::MAX_TEMPLATE_BYTES;

/// Most topics in `when.topics`.
pub const MAX_TOPICS: usize = 100;
/// Most scalars in an `in` list.
const MAX_IN_ITEMS: usize = 1000;
/// Largest compiled `matches` pattern (a short pattern such as `\w{1000}` compiles huge).
/// Ordinary patterns, Unicode classes included, compile to a few KiB.
pub const REGEX_SIZE_LIMIT: usize = 32 * 1024;
/// Cache of the lazy DFA of one compiled pattern, which grows while matching; past it the
/// regex engine falls back to a slower one, still linear in the input.
pub const REGEX_DFA_SIZE_LIMIT: usize = 64 * 1024;

/// A rule that cannot be saved: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct RuleError {
    /// JSON path from the rules document, e.g. `rules.then[0].notify.channel`.
    pub path: String,
    pub message: String,
}

fn err<T>(path: &str, message: impl Into<String>) -> Result<T, RuleError> {
    Err(RuleError {
        path: path.to_owned(),
        message: message.into(),
    })
}

/// Validated, ready-to-evaluate rules.
#[derive(Debug, Clone)]
pub struct Rules {
    pub topics: Filters,
    pub condition: Option<Cond>,
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone)]
pub enum Cond {
    All(Vec<Cond>),
    Any(Vec<Cond>),
    Not(Box<Cond>),
    Compare(Compare),
}

#[derive(Debug, Clone)]
pub struct Compare {
    /// Path segments, e.g. `["data", "a", "b"]`.
    pub field: Vec<String>,
    pub op: Op,
    pub value: Value,
    /// Compiled pattern for `matches`.
    pub regex: Option<Regex>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
    Contains,
    Matches,
    Exists,
}

/// A comparison's `field` as an ECMA-262 pattern, for the OpenAPI document (a test keeps it
/// in step with [`validate`]).
pub const FIELD_PATTERN: &str = r"^(topic|event_id|data(\.[A-Za-z0-9_-]+)*)$";

impl Op {
    /// Every op under the name a rule spells it with: the one list the parser, its error
    /// message and the OpenAPI document read.
    const ALL: [(&'static str, Op); 10] = [
        ("eq", Op::Eq),
        ("ne", Op::Ne),
        ("gt", Op::Gt),
        ("gte", Op::Gte),
        ("lt", Op::Lt),
        ("lte", Op::Lte),
        ("in", Op::In),
        ("contains", Op::Contains),
        ("matches", Op::Matches),
        ("exists", Op::Exists),
    ];

    /// Every op's name, as a rule spells it.
    pub fn names() -> impl Iterator<Item = &'static str> {
        Self::ALL.iter().map(|(name, _)| *name)
    }

    fn parse(s: &str) -> Option<Op> {
        Self::ALL
            .iter()
            .find(|(name, _)| *name == s)
            .map(|(_, op)| *op)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Notify {
        channel: String,
        to: String,
        template: Template,
    },
    Enqueue {
        worker: String,
        args: Value,
    },
    Publish {
        topic: String,
        data: Value,
    },
    SetState {
        system: i16,
        merge: Map<String, Value>,
    },
}

/// Notification channels a `notify` action may name.
pub const CHANNELS: &[&str] = &["telegram", "webhook"];

/// What one rule document has spent of its complexity budget so far.
struct Budget<'a> {
    limits: &'a PoliciesConfig,
    conditions: usize,
    patterns: usize,
    pattern_bytes: usize,
    template_bytes: usize,
}

impl Budget<'_> {
    fn condition(&mut self, path: &str) -> Result<(), RuleError> {
        self.conditions += 1;
        if self.conditions > self.limits.max_conditions {
            return err(
                path,
                format!(
                    "more than {} conditions in one policy (policies.max_conditions)",
                    self.limits.max_conditions
                ),
            );
        }
        Ok(())
    }

    /// Counted before the pattern is compiled.
    fn pattern(&mut self, pattern: &str, path: &str) -> Result<(), RuleError> {
        self.patterns += 1;
        self.pattern_bytes += pattern.len();
        if self.patterns > self.limits.max_patterns {
            return err(
                path,
                format!(
                    "more than {} matches patterns in one policy (policies.max_patterns)",
                    self.limits.max_patterns
                ),
            );
        }
        if self.pattern_bytes > self.limits.max_pattern_bytes {
            return err(
                path,
                format!(
                    "matches patterns exceed {} bytes in one policy (policies.max_pattern_bytes)",
                    self.limits.max_pattern_bytes
                ),
            );
        }
        Ok(())
    }

    /// Counted after the template parsed (parsing is linear and capped per template).
    fn template(&mut self, bytes: usize, path: &str) -> Result<(), RuleError> {
        self.template_bytes += bytes;
        if self.template_bytes > MAX_TEMPLATES_BYTES {
            return err(
                path,
                format!("notify templates exceed {MAX_TEMPLATES_BYTES} bytes in one policy"),
            );
        }
        Ok(())
    }
}

/// Validates a policy's `rules` within the complexity budget `limits`; `enqueueable` are the
/// workers an `enqueue` action may name.
pub fn validate<E: Enqueueable + ?Sized>(
    rules: &Value,
    enqueueable: &E,
    limits: &PoliciesConfig,
) -> Result<Rules, RuleError> {
    let obj = object(rules, "rules")?;
    only_keys(obj, "rules", &["when", "if", "then"])?;
    let when = obj
        .get("when")
        .map_or_else(|| err("rules.when", "is required"), Ok)?;
    let when = object(when, "rules.when")?;
    only_keys(when, "rules.when", &["topics"])?;
    let topics = match when.get("topics") {
        Some(Value::Array(list)) if !list.is_empty() && list.len() <= MAX_TOPICS => list,
        Some(Value::Array(_)) => {
            return err(
                "rules.when.topics",
                format!("must list 1 to {MAX_TOPICS} topics"),
            );
        }
        Some(_) => return err("rules.when.topics", "must be an array of topics"),
        None => return err("rules.when.topics", "is required"),
    };
    let mut filters = Vec::with_capacity(topics.len());
    for (i, t) in topics.iter().enumerate() {
        let path = format!("rules.when.topics[{i}]");
        let Some(s) = t.as_str() else {
            return err(&path, "must be a string");
        };
        match Filter::parse(s) {
            Ok(f) => filters.push(f),
            Err(_) => {
                return err(
                    &path,
                    "must be <domain>.<action> or <domain>.* in lowercase",
                );
            }
        }
    }
    let mut budget = Budget {
        limits,
        conditions: 0,
        patterns: 0,
        pattern_bytes: 0,
        template_bytes: 0,
    };
    let condition = match obj.get("if") {
        Some(c) => Some(condition(c, "rules.if", 1, &mut budget)?),
        None => None,
    };
    let actions = match obj.get("then") {
        Some(Value::Array(list)) if !list.is_empty() && list.len() <= limits.max_actions => list
            .iter()
            .enumerate()
            .map(|(i, a)| action(a, &format!("rules.then[{i}]"), enqueueable, &mut budget))
            .collect::<Result<Vec<_>, _>>()?,
        Some(Value::Array(_)) => {
            return err(
                "rules.then",
                format!(
                    "must list 1 to {} actions (policies.max_actions)",
                    limits.max_actions
                ),
            );
        }
        Some(_) => return err("rules.then", "must be an array of actions"),
        None => return err("rules.then", "is required"),
    };
    Ok(Rules {
        topics: Filters(filters),
        condition,
        actions,
    })
}

fn object<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, RuleError> {
    v.as_object()
        .map_or_else(|| err(path, "must be an object"), Ok)
}

fn only_keys(obj: &Map<String, Value>, path: &str, allowed: &[&str]) -> Result<(), RuleError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => err(
            &format!("{path}.{k}"),
            format!("unknown key (expected one of: {})", allowed.join(", ")),
        ),
        None => Ok(()),
    }
}

/// The single key of an object like `{"all": [...]}`.
fn single<'a>(
    obj: &'a Map<String, Value>,
    path: &str,
    kinds: &[&str],
) -> Result<(&'a str, &'a Value), RuleError> {
    let mut iter = obj.iter();
    match (iter.next(), iter.next()) {
        (Some((k, v)), None) if kinds.contains(&k.as_str()) => Ok((k.as_str(), v)),
        (Some((k, _)), None) => err(
            &format!("{path}.{k}"),
            format!("unknown key (expected one of: {})", kinds.join(", ")),
        ),
        _ => err(
            path,
            format!("must have exactly one key of: {}", kinds.join(", ")),
        ),
    }
}

fn condition(
    v: &Value,
    path: &str,
    depth: usize,
    budget: &mut Budget<'_>,
) -> Result<Cond, RuleError> {
    let max_depth = budget.limits.max_depth;
    if depth > max_depth {
        return err(
            path,
            format!("conditions nest deeper than {max_depth} levels (policies.max_depth)"),
        );
    }
    budget.condition(path)?;
    let obj = object(v, path)?;
    if obj.contains_key("field") || obj.contains_key("op") {
        return compare(obj, path, budget).map(Cond::Compare);
    }
    let (kind, inner) = single(obj, path, &["all", "any", "not", "field"])?;
    let inner_path = format!("{path}.{kind}");
    match kind {
        "not" => Ok(Cond::Not(Box::new(condition(
            inner,
            &inner_path,
            depth + 1,
            budget,
        )?))),
        _ => {
            // No length check of its own: the condition budget stops a long list at the
            // first item over it, naming that item.
            let list = match inner {
                Value::Array(list) if !list.is_empty() => list,
                _ => return err(&inner_path, "must be a non-empty array of conditions"),
            };
            let conds = list
                .iter()
                .enumerate()
                .map(|(i, c)| condition(c, &format!("{inner_path}[{i}]"), depth + 1, budget))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(if kind == "all" {
                Cond::All(conds)
            } else {
                Cond::Any(conds)
            })
        }
    }
}

fn compare(
    obj: &Map<String, Value>,
    path: &str,
    budget: &mut Budget<'_>,
) -> Result<Compare, RuleError> {
    only_keys(obj, path, &["field", "op", "value"])?;
    let field_path = format!("{path}.field");
    let field = match obj.get("field") {
        Some(Value::String(s)) => s,
        Some(_) => return err(&field_path, "must be a string"),
        None => return err(&field_path, "is required"),
    };
    let segments: Vec<String> = field.split('.').map(str::to_owned).collect();
    let valid_segment = |s: &String| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    let root_ok = match segments.first().map(String::as_str) {
        Some("data") => true,
        Some("topic") | Some("event_id") => segments.len() == 1,
        _ => false,
    };
    if !root_ok || !segments.iter().all(valid_segment) {
        return err(
            &field_path,
            "must be topic, event_id, data or data.<key>[.<key>...]",
        );
    }
    let op_path = format!("{path}.op");
    let op = match obj.get("op") {
        Some(Value::String(s)) => Op::parse(s).map_or_else(
            || {
                err(
                    &op_path,
                    format!(
                        "must be one of {}",
                        Op::names().collect::<Vec<_>>().join(", ")
                    ),
                )
            },
            Ok,
        )?,
        Some(_) => return err(&op_path, "must be a string"),
        None => return err(&op_path, "is required"),
    };
    let value_path = format!("{path}.value");
    let value = obj.get("value").cloned();
    let mut regex = None;
    let value = match (op, value) {
        (Op::Exists, None) => Value::Bool(true),
        (Op::Exists, Some(Value::Bool(b))) => Value::Bool(b),
        (Op::Exists, Some(_)) => return err(&value_path, "must be true or false for exists"),
        (_, None) => return err(&value_path, "is required"),
        (Op::Gt | Op::Gte | Op::Lt | Op::Lte, Some(v)) if v.is_number() || v.is_string() => v,
        (Op::Gt | Op::Gte | Op::Lt | Op::Lte, Some(_)) => {
            return err(
                &value_path,
                "must be a number or a string for an ordering comparison",
            );
        }
        (Op::In, Some(Value::Array(list)))
            if list.len() <= MAX_IN_ITEMS && list.iter().all(is_scalar) =>
        {
            Value::Array(list)
        }
        (Op::In, Some(_)) => {
            return err(
                &value_path,
                format!("must be an array of up to {MAX_IN_ITEMS} scalars"),
            );
        }
        (Op::Contains, Some(v)) if is_scalar(&v) => v,
        (Op::Contains, Some(_)) => {
            return err(&value_path, "must be a string, number, boolean or null");
        }
        (Op::Matches, Some(Value::String(p))) => {
            budget.pattern(&p, &value_path)?;
            let compiled = regex::RegexBuilder::new(&p)
                .size_limit(REGEX_SIZE_LIMIT)
                .dfa_size_limit(REGEX_DFA_SIZE_LIMIT)
                .build()
                .map_err(|e| RuleError {
                    path: value_path.clone(),
                    message: format!("is not a valid regular expression: {e}"),
                })?;
            regex = Some(compiled);
            Value::String(p)
        }
        (Op::Matches, Some(_)) => return err(&value_path, "must be a regular expression string"),
        (Op::Eq | Op::Ne, Some(v)) => v,
    };
    Ok(Compare {
        field: segments,
        op,
        value,
        regex,
    })
}

fn is_scalar(v: &Value) -> bool {
    !v.is_array() && !v.is_object()
}

fn nonempty_string(obj: &Map<String, Value>, key: &str, path: &str) -> Result<String, RuleError> {
    let p = format!("{path}.{key}");
    match obj.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(_) => err(&p, "must be a non-empty string"),
        None => err(&p, "is required"),
    }
}

fn object_or_empty(obj: &Map<String, Value>, key: &str, path: &str) -> Result<Value, RuleError> {
    match obj.get(key) {
        None => Ok(Value::Object(Map::new())),
        Some(v @ Value::Object(_)) => Ok(v.clone()),
        Some(_) => err(&format!("{path}.{key}"), "must be an object"),
    }
}

/// The workers a policy may `enqueue`, and whether given args fit one of them.
pub trait Enqueueable {
    /// Whether a policy may name `worker`.
    fn allows(&self, worker: &str) -> bool;
    /// Those names, for the error message.
    fn names(&self) -> Vec<String>;
    /// Whether `args` fit `worker`'s arguments.
    fn check_args(&self, worker: &str, args: &Value) -> Result<(), crate::jobs::ArgsError>;
}

/// The tenant-scoped workers of a registry, with their own args checks.
impl Enqueueable for crate::jobs::Registry {
    fn allows(&self, worker: &str) -> bool {
        self.is_tenant_scoped(worker)
    }
    fn names(&self) -> Vec<String> {
        self.tenant_names().into_iter().map(str::to_owned).collect()
    }
    fn check_args(&self, worker: &str, args: &Value) -> Result<(), crate::jobs::ArgsError> {
        crate::jobs::Registry::check_args(self, worker, args)
    }
}

/// A plain list of names whose workers take any args (unit tests).
impl Enqueueable for [&str] {
    fn allows(&self, worker: &str) -> bool {
        self.contains(&worker)
    }
    fn names(&self) -> Vec<String> {
        self.iter().map(|n| (*n).to_owned()).collect()
    }
    fn check_args(&self, _: &str, _: &Value) -> Result<(), crate::jobs::ArgsError> {
        Ok(())
    }
}

fn action<E: Enqueueable + ?Sized>(
    v: &Value,
    path: &str,
    enqueueable: &E,
    budget: &mut Budget<'_>,
) -> Result<Action, RuleError> {
    let obj = object(v, path)?;
    let (kind, body) = single(obj, path, &["notify", "enqueue", "publish", "set_state"])?;
    let path = format!("{path}.{kind}");
    let body = object(body, &path)?;
    match kind {
        "notify" => {
            only_keys(body, &path, &["channel", "to", "template"])?;
            let channel = nonempty_string(body, "channel", &path)?;
            if !CHANNELS.contains(&channel.as_str()) {
                return err(
                    &format!("{path}.channel"),
                    format!("must be one of: {}", CHANNELS.join(", ")),
                );
            }
            let to = nonempty_string(body, "to", &path)?;
            let template_path = format!("{path}.template");
            let source = nonempty_string(body, "template", &path)?;
            let template = Template::parse(&source).or_else(|e| err(&template_path, e.0))?;
            budget.template(source.len(), &template_path)?;
            Ok(Action::Notify {
                channel,
                to,
                template,
            })
        }
        "enqueue" => {
            only_keys(body, &path, &["worker", "args"])?;
            let worker = nonempty_string(body, "worker", &path)?;
            if !enqueueable.allows(&worker) {
                return err(
                    &format!("{path}.worker"),
                    format!(
                        "is not a worker a policy may enqueue (one of: {})",
                        enqueueable.names().join(", ")
                    ),
                );
            }
            let args = object_or_empty(body, "args", &path)?;
            if let Err(why) = enqueueable.check_args(&worker, &args) {
                return err(&format!("{path}.{}", why.path), why.message);
            }
            Ok(Action::Enqueue { worker, args })
        }
        "publish" => {
            only_keys(body, &path, &["topic", "data"])?;
            let topic = nonempty_string(body, "topic", &path)?;
            if crate::events::topic::validate(&topic).is_err() {
                return err(
                    &format!("{path}.topic"),
                    "must be <domain>.<action> in lowercase",
                );
            }
            Ok(Action::Publish {
                topic,
                data: object_or_empty(body, "data", &path)?,
            })
        }
        _ => {
            only_keys(body, &path, &["system", "merge"])?;
            let system = match body.get("system") {
                None => return err(&format!("{path}.system"), "is required"),
                Some(v) => match v.as_i64() {
                    Some(n @ 1..=5) => n as i16,
                    _ => return err(&format!("{path}.system"), "must be an integer from 1 to 5"),
                },
            };
            let merge = match body.get("merge") {
                Some(Value::Object(m)) => m.clone(),
                Some(_) => return err(&format!("{path}.merge"), "must be an object"),
                None => return err(&format!("{path}.merge"), "is required"),
            };
            Ok(Action::SetState { system, merge })
        }
    }
}

/// Three-valued truth: a missing field or a type mismatch is `Unknown`, never `True`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truth {
    True,
    False,
    Unknown,
}

impl Truth {
    fn from(b: bool) -> Truth {
        if b { Truth::True } else { Truth::False }
    }
}

impl Rules {
    /// How many compiled `matches` patterns these rules hold (what they weigh in memory).
    pub fn pattern_count(&self) -> usize {
        fn count(c: &Cond) -> usize {
            match c {
                Cond::All(cs) | Cond::Any(cs) => cs.iter().map(count).sum(),
                Cond::Not(c) => count(c),
                Cond::Compare(cmp) => usize::from(cmp.regex.is_some()),
            }
        }
        self.condition.as_ref().map_or(0, count)
    }

    /// Whether the event (`{"topic","event_id","data"}`) triggers these rules: its topic
    /// matches `when.topics` and `if` is definitely true.
    pub fn triggers(&self, topic: &str, event: &Value) -> bool {
        self.topics.matches(topic)
            && self
                .condition
                .as_ref()
                .is_none_or(|c| c.eval(event) == Truth::True)
    }
}

impl Cond {
    pub fn eval(&self, event: &Value) -> Truth {
        match self {
            Cond::All(cs) => {
                let mut unknown = false;
                for c in cs {
                    match c.eval(event) {
                        Truth::False => return Truth::False,
                        Truth::Unknown => unknown = true,
                        Truth::True => {}
                    }
                }
                if unknown { Truth::Unknown } else { Truth::True }
            }
            Cond::Any(cs) => {
                let mut unknown = false;
                for c in cs {
                    match c.eval(event) {
                        Truth::True => return Truth::True,
                        Truth::Unknown => unknown = true,
                        Truth::False => {}
                    }
                }
                if unknown {
                    Truth::Unknown
                } else {
                    Truth::False
                }
            }
            Cond::Not(c) => match c.eval(event) {
                Truth::True => Truth::False,
                Truth::False => Truth::True,
                Truth::Unknown => Truth::Unknown,
            },
            Cond::Compare(cmp) => cmp.eval(event),
        }
    }
}

/// The value at `path` in `doc` (object keys, or array indexes for arrays).
fn lookup<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(doc, |v, seg| match v {
        Value::Object(m) => m.get(seg),
        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// Equality of two JSON values of the same type (numbers numerically); `None` across types.
fn same_type_eq(a: &Value, b: &Value) -> Option<bool> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => Some(x.as_f64() == y.as_f64()),
        (Value::String(x), Value::String(y)) => Some(x == y),
        (Value::Bool(x), Value::Bool(y)) => Some(x == y),
        (Value::Null, Value::Null) => Some(true),
        (Value::Array(_), Value::Array(_)) | (Value::Object(_), Value::Object(_)) => Some(a == b),
        _ => None,
    }
}

impl Compare {
    fn eval(&self, event: &Value) -> Truth {
        let found = lookup(event, &self.field);
        if self.op == Op::Exists {
            let present = found.is_some_and(|v| !v.is_null());
            return Truth::from(present == self.value.as_bool().unwrap_or(true));
        }
        let Some(field) = found else {
            return Truth::Unknown;
        };
        let ordering = || -> Option<std::cmp::Ordering> {
            match (field, &self.value) {
                (Value::Number(a), Value::Number(b)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
                (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
                _ => None,
            }
        };
        use std::cmp::Ordering::*;
        let t = match self.op {
            Op::Eq => same_type_eq(field, &self.value),
            Op::Ne => same_type_eq(field, &self.value).map(|e| !e),
            Op::Gt => ordering().map(|o| o == Greater),
            Op::Gte => ordering().map(|o| o != Less),
            Op::Lt => ordering().map(|o| o == Less),
            Op::Lte => ordering().map(|o| o != Greater),
            Op::In => {
                let list = self.value.as_array().map(Vec::as_slice).unwrap_or_default();
                let comparisons: Vec<bool> =
                    list.iter().filter_map(|v| same_type_eq(field, v)).collect();
                if comparisons.is_empty() {
                    None
                } else {
                    Some(comparisons.into_iter().any(|b| b))
                }
            }
            Op::Contains => match (field, &self.value) {
                (Value::String(s), Value::String(needle)) => Some(s.contains(needle.as_str())),
                (Value::Array(items), v) => {
                    Some(items.iter().any(|i| same_type_eq(i, v) == Some(true)))
                }
                _ => None,
            },
            Op::Matches => match (field, &self.regex) {
                (Value::String(s), Some(re)) => Some(re.is_match(s)),
                _ => None,
            },
            Op::Exists => None,
        };
        match t {
            Some(b) => Truth::from(b),
            None => Truth::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Tenant-scoped workers, as the registry would list them.
    const WORKERS: &[&str] = &["artifact_processor", "episode_analyzer"];

    fn validate(rules: &Value, workers: &[&str]) -> Result<Rules, RuleError> {
        super::validate(rules, workers, &PoliciesConfig::default())
    }

    fn rules_with_if(cond: Value) -> Value {
        json!({"when": {"topics": ["episode.analyzed"]}, "if": cond, "then": [{"publish": {"topic": "ops.alert"}}]})
    }

    fn rejected(rules: Value) -> RuleError {
        validate(&rules, WORKERS).expect_err("should be rejected")
    }

    #[test]
    fn the_documented_field_pattern_and_op_names_agree_with_the_validator() {
        let pattern = Regex::new(FIELD_PATTERN).unwrap();
        for field in [
            "topic",
            "event_id",
            "data",
            "data.a",
            "data.a-b.c_d.0",
            "topic.x",
            "event_id.x",
            "datax",
            "data.",
            "data..a",
            "data.a b",
            "data.\u{e9}",
            "x.data",
            "",
        ] {
            let valid = validate(
                &rules_with_if(json!({"field": field, "op": "exists"})),
                WORKERS,
            )
            .is_ok();
            assert_eq!(pattern.is_match(field), valid, "{field:?}");
        }
        for op in Op::names() {
            assert!(Op::parse(op).is_some(), "{op}");
        }
        assert!(Op::parse("like").is_none());
        let e = rejected(rules_with_if(
            json!({"field": "data", "op": "like", "value": 1}),
        ));
        assert_eq!(e.path, "rules.if.op");
        assert_eq!(
            e.message,
            "must be one of eq, ne, gt, gte, lt, lte, in, contains, matches, exists"
        );
    }

    #[test]
    fn a_complete_rule_validates() {
        let r = validate(
            &json!({
                "when": {"topics": ["episode.analyzed", "system.*"]},
                "if": {"all": [
                    {"field": "data.analysis.sentiment.label", "op": "eq", "value": "negative"},
                    {"not": {"field": "data.tags", "op": "contains", "value": "test"}},
                    {"any": [{"field": "data.n", "op": "gte", "value": 3}, {"field": "topic", "op": "matches", "value": "^system\\."}]},
                ]},
                "then": [
                    {"notify": {"channel": "telegram", "to": "12345", "template": "hi"}},
                    {"enqueue": {"worker": "episode_analyzer", "args": {}}},
                    {"publish": {"topic": "ops.escalated", "data": {"level": 2}}},
                    {"set_state": {"system": 3, "merge": {"alert": true}}},
                ],
            }),
            WORKERS,
        )
        .unwrap();
        assert_eq!(r.actions.len(), 4);
        assert!(r.topics.matches("system.health"));
        // `if` may be left out.
        validate(
            &json!({"when": {"topics": ["a.b"]}, "then": [{"publish": {"topic": "c.d"}}]}),
            WORKERS,
        )
        .unwrap();
    }

    #[test]
    fn each_kind_of_bad_rule_is_rejected_with_its_json_path() {
        let cases: Vec<(Value, &str)> = vec![
            (json!([]), "rules"),
            (
                json!({"when": {"topics": ["a.b"]}, "then": [{"publish": {"topic": "c.d"}}], "else": 1}),
                "rules.else",
            ),
            (
                json!({"then": [{"publish": {"topic": "c.d"}}]}),
                "rules.when",
            ),
            (
                json!({"when": {}, "then": [{"publish": {"topic": "c.d"}}]}),
                "rules.when.topics",
            ),
            (
                json!({"when": {"topics": []}, "then": [{"publish": {"topic": "c.d"}}]}),
                "rules.when.topics",
            ),
            (
                json!({"when": {"topics": ["ok.topic", "Bad"]}, "then": [{"publish": {"topic": "c.d"}}]}),
                "rules.when.topics[1]",
            ),
            (
                json!({"when": {"topics": [7]}, "then": [{"publish": {"topic": "c.d"}}]}),
                "rules.when.topics[0]",
            ),
            (json!({"when": {"topics": ["a.b"]}}), "rules.then"),
            (
                json!({"when": {"topics": ["a.b"]}, "then": []}),
                "rules.then",
            ),
            (
                json!({"when": {"topics": ["a.b"]}, "then": [{"explode": {}}]}),
                "rules.then[0].explode",
            ),
            (
                json!({"when": {"topics": ["a.b"]}, "then": [{"publish": {"topic": "c.d"}, "notify": {}}]}),
                "rules.then[0]",
            ),
            (
                json!({"when": {"topics": ["a.b"]}, "then": [{"notify": {"channel": "pigeon", "to": "x", "template": "t"}}]}),
                "rules.then[0].notify.channel",
            ),
            (
                json!({"when": {"topics": ["a.b"]}, "then": [{"notify": {"channel": "telegram", "template": "t"}}]}),
                "rules.then[0].notify.to",
            ),
            (
                json!({"when": {"topics": ["a.b"]}, "then": [{"notify": {"channel": "telegram", "to": "x", "template": ""}}]}),
                "rules.then[0].notify.template",
            ),
            (
                json!({"when": {"topics": ["a.b"]}, "then": [{"enqueue": {"worker": "rm_rf"}}]}),
                "rules.then[0].enqueue.worker",
            ),
            // A system worker (not in the enqueueable list) is refused like an unknown one.
            (
                json!({"when": {"topics": ["a.b"]}, "then": [{"publish": {"topic": "c.d"}}, {"enqueue": {"worker": "health_check"}}]}),
                "rules.then[1].enqueue.worker",
            ),
            (
                json!({"when": {"topics": ["a.b"]}, "then": [{"enqueue": {"worker": "episode_analyzer", "args": [1]}}]}),
                "rules.then[0].enqueue.args",
            ),
            (
                json!({"when": {"topics": ["a.b"]}, "then": [{"publish": {"topic": "nope"}}]}),
                "rules.then[0].publish.topic",
            ),
            (
                json!({"when": {"topics": ["a.b"]}, "then": [{"publish": {"topic": "c.d", "data": "x"}}]}),
                "rules.then[0].publish.data",
            ),
            (
                json!({"when": {"topics": ["a.b"]}, "then": [{"set_state": {"system": 6, "merge": {}}}]}),
                "rules.then[0].set_state.system",
            ),
            (
                json!({"when": {"topics": ["a.b"]}, "then": [{"set_state": {"system": 1}}]}),
                "rules.then[0].set_state.merge",
            ),
            (
                json!({"when": {"topics": ["a.b"]}, "then": [{"set_state": {"system": 1, "merge": {}, "x": 1}}]}),
                "rules.then[0].set_state.x",
            ),
            (rules_with_if(json!("yes")), "rules.if"),
            (rules_with_if(json!({})), "rules.if"),
            (rules_with_if(json!({"all": []})), "rules.if.all"),
            (
                rules_with_if(json!({"any": {"field": "data.a"}})),
                "rules.if.any",
            ),
            (
                rules_with_if(json!({"all": [{"xor": []}]})),
                "rules.if.all[0].xor",
            ),
            (
                rules_with_if(json!({"not": {"field": "data.a", "op": "between", "value": 1}})),
                "rules.if.not.op",
            ),
            (
                rules_with_if(json!({"field": "secret.a", "op": "eq", "value": 1})),
                "rules.if.field",
            ),
            (
                rules_with_if(json!({"field": "data..a", "op": "eq", "value": 1})),
                "rules.if.field",
            ),
            (
                rules_with_if(json!({"field": "data.a", "value": 1})),
                "rules.if.op",
            ),
            (
                rules_with_if(json!({"field": "data.a", "op": "eq"})),
                "rules.if.value",
            ),
            (
                rules_with_if(json!({"field": "data.a", "op": "gt", "value": [1]})),
                "rules.if.value",
            ),
            (
                rules_with_if(json!({"field": "data.a", "op": "in", "value": 1})),
                "rules.if.value",
            ),
            (
                rules_with_if(json!({"field": "data.a", "op": "in", "value": [{"x": 1}]})),
                "rules.if.value",
            ),
            (
                rules_with_if(json!({"field": "data.a", "op": "contains", "value": {"x": 1}})),
                "rules.if.value",
            ),
            (
                rules_with_if(json!({"field": "data.a", "op": "matches", "value": "(unclosed"})),
                "rules.if.value",
            ),
            (
                rules_with_if(json!({"field": "data.a", "op": "exists", "value": "yes"})),
                "rules.if.value",
            ),
            (
                rules_with_if(json!({"field": "data.a", "op": "eq", "value": 1, "also": 2})),
                "rules.if.also",
            ),
        ];
        for (rules, path) in cases {
            let e = rejected(rules.clone());
            assert_eq!(e.path, path, "{rules}: {e}");
            assert!(!e.message.is_empty());
        }
        let mut deep = json!({"field": "data.a", "op": "exists"});
        for _ in 0..PoliciesConfig::default().max_depth {
            deep = json!({"not": deep});
        }
        assert!(rejected(rules_with_if(deep)).message.contains("deeper"));
    }

    fn comparison(i: usize) -> Value {
        json!({"field": "data.n", "op": "eq", "value": i})
    }

    fn pattern(i: usize, p: &str) -> Value {
        json!({"field": "data.s", "op": "matches", "value": format!("{p}{i}")})
    }

    #[test]
    fn the_complexity_budget_is_enforced_with_the_path_of_the_first_item_over_it() {
        let limits = PoliciesConfig {
            max_conditions: 5,
            max_depth: 3,
            max_patterns: 2,
            max_pattern_bytes: 10,
            max_actions: 2,
        };
        let check = |rules: Value| super::validate(&rules, WORKERS, &limits);
        let publish = json!({"publish": {"topic": "c.d"}});
        // At the budget: accepted.
        check(rules_with_if(
            json!({"all": [comparison(1), comparison(2), comparison(3), comparison(4)]}),
        ))
        .unwrap();
        check(rules_with_if(
            json!({"all": [pattern(1, "ab"), pattern(2, "cd")]}),
        ))
        .unwrap();
        check(rules_with_if(json!({"not": {"not": comparison(1)}}))).unwrap();
        check(json!({"when": {"topics": ["a.b"]}, "then": [publish, publish]})).unwrap();
        let cases: Vec<(Value, &str, &str)> = vec![
            // 1 `all` + 5 comparisons: the fifth comparison is the sixth condition.
            (
                rules_with_if(json!({"all": (0..5).map(comparison).collect::<Vec<_>>()})),
                "rules.if.all[4]",
                "max_conditions",
            ),
            // Counted across nesting, not per list.
            (
                rules_with_if(
                    json!({"any": [{"all": [comparison(1), comparison(2)]}, {"all": [comparison(3), comparison(4)]}]}),
                ),
                "rules.if.any[1].all[0]",
                "max_conditions",
            ),
            (
                rules_with_if(json!({"not": {"not": {"not": comparison(1)}}})),
                "rules.if.not.not.not",
                "max_depth",
            ),
            (
                rules_with_if(json!({"all": [pattern(1, "a"), pattern(2, "b"), pattern(3, "c")]})),
                "rules.if.all[2].value",
                "max_patterns",
            ),
            (
                rules_with_if(json!({"all": [pattern(1, "abcde"), pattern(2, "fghij")]})),
                "rules.if.all[1].value",
                "max_pattern_bytes",
            ),
            (
                json!({"when": {"topics": ["a.b"]}, "then": [publish, publish, publish]}),
                "rules.then",
                "max_actions",
            ),
        ];
        for (rules, path, limit) in cases {
            let e = check(rules.clone()).expect_err("over budget");
            assert_eq!(e.path, path, "{rules}: {e}");
            assert!(e.message.contains(limit), "{e}");
        }
        // A pattern too large once compiled is refused even within the byte budget.
        let e = super::validate(
            &rules_with_if(json!({"field": "data.s", "op": "matches", "value": "\\w{1000}"})),
            WORKERS,
            &PoliciesConfig::default(),
        )
        .expect_err("compiled size");
        assert_eq!(e.path, "rules.if.value");
    }

    fn eval(cond: Value, data: Value) -> Truth {
        let rules = validate(&rules_with_if(cond), WORKERS).unwrap();
        let event = json!({"topic": "episode.analyzed", "event_id": 42, "data": data});
        rules.condition.unwrap().eval(&event)
    }

    use Truth::{False as F, True as T, Unknown as U};

    #[test]
    fn every_op_compares_like_values_and_is_unknown_on_a_type_mismatch() {
        let data = json!({"n": 5, "s": "beta", "b": true, "z": null, "tags": ["x", "y"], "o": {"k": [10, 20]}});
        let cases: Vec<(&str, Value, Truth)> = vec![
            ("eq", json!(5), T),
            ("eq", json!(5.0), T),
            ("eq", json!(6), F),
            ("eq", json!("5"), U),
            ("ne", json!(6), T),
            ("ne", json!(5), F),
            ("ne", json!("5"), U),
            ("gt", json!(4), T),
            ("gt", json!(5), F),
            ("gt", json!("4"), U),
            ("gte", json!(5), T),
            ("gte", json!(6), F),
            ("lt", json!(6), T),
            ("lt", json!(5), F),
            ("lte", json!(5), T),
            ("lte", json!(4), F),
            ("in", json!([1, 5]), T),
            ("in", json!([1, 2]), F),
            ("in", json!(["5"]), U),
        ];
        for (op, value, expected) in cases {
            assert_eq!(
                eval(
                    json!({"field": "data.n", "op": op, "value": value}),
                    data.clone()
                ),
                expected,
                "n {op} {value}"
            );
        }
        let cases: Vec<(&str, &str, Value, Truth)> = vec![
            ("data.s", "gt", json!("alpha"), T),
            ("data.s", "lt", json!("alpha"), F),
            ("data.s", "contains", json!("et"), T),
            ("data.s", "contains", json!("zz"), F),
            ("data.s", "contains", json!(1), U),
            ("data.n", "contains", json!(1), U),
            ("data.tags", "contains", json!("y"), T),
            ("data.tags", "contains", json!("q"), F),
            ("data.s", "matches", json!("^b.t"), T),
            ("data.s", "matches", json!("^a"), F),
            ("data.n", "matches", json!("5"), U),
            ("data.b", "eq", json!(true), T),
            ("data.b", "gt", json!(1), U),
            ("data.z", "eq", json!(null), T),
            ("data.o.k.1", "eq", json!(20), T),
            ("data.o.k.9", "eq", json!(20), U),
            ("data.missing", "eq", json!(1), U),
            ("data.missing", "ne", json!(1), U),
            ("topic", "eq", json!("episode.analyzed"), T),
            ("event_id", "gt", json!(41), T),
        ];
        for (field, op, value, expected) in cases {
            assert_eq!(
                eval(
                    json!({"field": field, "op": op, "value": value}),
                    data.clone()
                ),
                expected,
                "{field} {op} {value}"
            );
        }
        for (field, value, expected) in [
            ("data.n", json!(true), T),
            ("data.missing", json!(true), F),
            ("data.missing", json!(false), T),
            ("data.z", json!(true), F),
        ] {
            assert_eq!(
                eval(
                    json!({"field": field, "op": "exists", "value": value}),
                    data.clone()
                ),
                expected,
                "{field} exists {value}"
            );
        }
        assert_eq!(eval(json!({"field": "data.n", "op": "exists"}), data), T);
    }

    #[test]
    fn all_any_not_use_three_valued_logic_so_nothing_unknown_is_true() {
        let t = json!({"field": "data.n", "op": "eq", "value": 1});
        let f = json!({"field": "data.n", "op": "eq", "value": 2});
        let u = json!({"field": "data.n", "op": "eq", "value": "1"});
        let data = json!({"n": 1});
        let e = |c: Value| eval(c, data.clone());
        assert_eq!(e(json!({"all": [t, t]})), T);
        assert_eq!(e(json!({"all": [t, f]})), F);
        assert_eq!(e(json!({"all": [t, u]})), U);
        assert_eq!(e(json!({"all": [u, f]})), F);
        assert_eq!(e(json!({"any": [f, t]})), T);
        assert_eq!(e(json!({"any": [f, f]})), F);
        assert_eq!(e(json!({"any": [f, u]})), U);
        assert_eq!(e(json!({"any": [u, t]})), T);
        assert_eq!(e(json!({"not": t})), F);
        assert_eq!(e(json!({"not": f})), T);
        // A type mismatch stays unknown under negation: it never becomes true.
        assert_eq!(e(json!({"not": u})), U);
        assert_eq!(e(json!({"not": {"not": u}})), U);
        let rules = validate(&rules_with_if(json!({"not": u})), WORKERS).unwrap();
        assert!(!rules.triggers("episode.analyzed", &json!({"data": data})));
        let rules = validate(&rules_with_if(json!({"not": f})), WORKERS).unwrap();
        assert!(rules.triggers("episode.analyzed", &json!({"data": data})));
        assert!(
            !rules.triggers("episode.created", &json!({"data": data})),
            "topic must match"
        );
    }
}
