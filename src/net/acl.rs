//! Authorization: who may do what to which object, decided from the peer's verified
//! [`Identity`] alone (never from anything the peer says in a request).
//!
//! ACL file format (`--acl FILE`), one rule per line, like the seed's Casbin policy:
//!
//! ```text
//! # subject, object,  action
//! alice,     3,       produce     # alice may produce to partition 3
//! alice,     *,       consume     # ... and consume from every partition
//! ops,       cluster, admin       # ops may join and remove nodes
//! *,         cluster, consume     # everyone may read metadata
//! n1,        *,       *           # node n1 may do everything
//! ```
//!
//! - Fields are separated by commas and trimmed; `#` starts a comment that runs to the end of
//!   the line; blank lines are ignored. A Casbin-style leading `p,` field is accepted and
//!   skipped, so the seed's `policy.csv` loads as it is.
//! - subject: a certificate common name, compared exactly, or `*` for any certificate the CA
//!   signed.
//! - object: `*`, a partition number (`3`), or `cluster` (metadata and membership).
//! - action: `produce`, `consume`, `admin`, `replicate` or `*`. Reading metadata is
//!   `cluster, consume`. Keywords (`cluster` and the actions) are case-insensitive.
//!
//! Decisions:
//! - With an ACL file, a request is allowed only if some rule matches it; everything else,
//!   including every unknown subject, is denied. There are no deny rules, so the order of the
//!   lines does not matter.
//! - Without one ([`Policy::Default`]): any certificate the CA signed may produce to and
//!   consume from every partition and read metadata; `admin` and `replicate` need a node
//!   certificate (OU `corelog-node`, see [`crate::certs`]). Producing to `cluster` means
//!   nothing and is denied.
//! - The whole file is checked at load time and the first bad line stops the load with the
//!   file, the line number and what is wrong: a typo never silently narrows or widens access.

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::net::tls::Identity;

/// Largest ACL file accepted; far beyond any hand-written policy, small enough to read at
/// start-up without thinking about memory.
pub const ACL_FILE_BYTES_MAX: u64 = 1 << 20;
/// Longest subject in a rule: RFC 5280's upper bound for a common name, so a longer subject
/// could never match a certificate.
pub const SUBJECT_BYTES_MAX: usize = 64;

/// What a request wants to do.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Append records to a partition.
    Produce,
    /// Read records from a partition, or metadata from the cluster.
    Consume,
    /// Change the cluster: join, leave.
    Admin,
    /// Peer traffic: Raft replication between nodes.
    Replicate,
}

impl Action {
    /// Every action, in the order the ACL format lists them.
    pub const ALL: [Action; 4] = [
        Action::Produce,
        Action::Consume,
        Action::Admin,
        Action::Replicate,
    ];

    /// The keyword the ACL file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Produce => "produce",
            Action::Consume => "consume",
            Action::Admin => "admin",
            Action::Replicate => "replicate",
        }
    }

    fn parse(keyword: &str) -> Option<Action> {
        Action::ALL
            .into_iter()
            .find(|action| keyword.eq_ignore_ascii_case(action.as_str()))
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request acts on.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Object {
    /// One partition's records.
    Partition(u32),
    /// The cluster as a whole: metadata, servers, membership.
    Cluster,
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::Partition(p) => write!(f, "partition {p}"),
            Object::Cluster => f.write_str("cluster"),
        }
    }
}

/// A loaded ACL file: the rules that grant access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl {
    path: PathBuf,
    rules: Vec<Rule>,
}

/// The authorization policy a node runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Policy {
    /// An ACL file: allowed only what a rule grants.
    File(Acl),
    /// No ACL file: see the module doc.
    Default,
}

/// Why an ACL file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("cannot read ACL file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("ACL file {} is larger than {max} bytes", path.display())]
    TooLarge { path: PathBuf, max: u64 },

    #[error(
        "{}:{line}: {problem} (rules are `subject, object, action`)",
        path.display()
    )]
    Line {
        path: PathBuf,
        /// 1-based.
        line: usize,
        problem: LineProblem,
    },
}

/// What is wrong with one line of an ACL file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    #[error("expected 3 comma-separated fields, found {found}")]
    FieldCount { found: usize },

    #[error("the {field} is empty")]
    EmptyField { field: &'static str },

    #[error("subject {subject:?} is longer than {max} bytes", max = SUBJECT_BYTES_MAX)]
    SubjectTooLong { subject: String },

    #[error("bad object {object:?}: use *, a partition number such as 3, or cluster")]
    BadObject { object: String },

    #[error("unknown action {action:?}: use produce, consume, admin, replicate or *")]
    UnknownAction { action: String },

    #[error("the line is not UTF-8 text")]
    NotUtf8,
}

impl Acl {
    /// Reads and checks an ACL file.
    pub fn load(path: &Path) -> Result<Acl, AclError> {
        let read_error = |source| AclError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = fs::File::open(path).map_err(read_error)?;
        // Read one byte past the limit to tell "exactly at the limit" from "over it" without
        // trusting a size from metadata that could change under us.
        let mut bytes = Vec::new();
        file.take(ACL_FILE_BYTES_MAX + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        if bytes.len() as u64 > ACL_FILE_BYTES_MAX {
            return Err(AclError::TooLarge {
                path: path.to_path_buf(),
                max: ACL_FILE_BYTES_MAX,
            });
        }
        match String::from_utf8(bytes) {
            Ok(text) => Acl::parse(&text, path),
            Err(e) => {
                let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
                Err(AclError::Line {
                    path: path.to_path_buf(),
                    line: valid.iter().filter(|&&b| b == b'\n').count() + 1,
                    problem: LineProblem::NotUtf8,
                })
            }
        }
    }

    /// Parses ACL text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Acl, AclError> {
        let mut rules = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let parsed = parse_line(line).map_err(|problem| AclError::Line {
                path: origin.to_path_buf(),
                line: index + 1,
                problem,
            })?;
            rules.extend(parsed);
        }
        Ok(Acl {
            path: origin.to_path_buf(),
            rules,
        })
    }

    /// Whether some rule grants `who` the `action` on `object`.
    pub fn allows(&self, who: &Identity, object: Object, action: Action) -> bool {
        self.rules
            .iter()
            .any(|rule| rule.matches(who, object, action))
    }

    /// The file the rules came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many rules the file holds. A file with none denies everything.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

impl Policy {
    /// The policy for `--acl`: the file when given, the default policy otherwise.
    pub fn from_acl_file(path: Option<&Path>) -> Result<Policy, AclError> {
        match path {
            Some(path) => Acl::load(path).map(Policy::File),
            None => Ok(Policy::Default),
        }
    }

    /// Whether `who` may do `action` on `object`.
    pub fn allows(&self, who: &Identity, object: Object, action: Action) -> bool {
        match self {
            Policy::File(acl) => acl.allows(who, object, action),
            Policy::Default => match (action, object) {
                (Action::Produce, Object::Partition(_)) => true,
                (Action::Produce, Object::Cluster) => false,
                (Action::Consume, _) => true,
                (Action::Admin | Action::Replicate, _) => who.is_node,
            },
        }
    }
}

/// One line of an ACL file. `None` in a field is the `*` wildcard.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    subject: Option<String>,
    object: Option<Object>,
    action: Option<Action>,
}

impl Rule {
    fn matches(&self, who: &Identity, object: Object, action: Action) -> bool {
        self.subject.as_deref().is_none_or(|s| s == who.subject)
            && self.object.is_none_or(|o| o == object)
            && self.action.is_none_or(|a| a == action)
    }
}

/// Parses one line: `Ok(None)` for a blank or comment-only line.
fn parse_line(line: &str) -> Result<Option<Rule>, LineProblem> {
    let content = match line.find('#') {
        Some(comment) => &line[..comment],
        None => line,
    };
    if content.trim().is_empty() {
        return Ok(None);
    }
    let mut fields: Vec<&str> = content.split(',').map(str::trim).collect();
    // Casbin policy lines start with the policy type `p`.
    if fields.len() == 4 && fields[0] == "p" {
        fields.remove(0);
    }
    let [subject, object, action] = fields[..] else {
        return Err(LineProblem::FieldCount {
            found: fields.len(),
        });
    };
    Ok(Some(Rule {
        subject: parse_subject(subject)?,
        object: parse_object(object)?,
        action: parse_action(action)?,
    }))
}

fn parse_subject(field: &str) -> Result<Option<String>, LineProblem> {
    match field {
        "" => Err(LineProblem::EmptyField { field: "subject" }),
        "*" => Ok(None),
        s if s.len() > SUBJECT_BYTES_MAX => Err(LineProblem::SubjectTooLong {
            subject: s.to_string(),
        }),
        s => Ok(Some(s.to_string())),
    }
}

fn parse_object(field: &str) -> Result<Option<Object>, LineProblem> {
    match field {
        "" => Err(LineProblem::EmptyField { field: "object" }),
        "*" => Ok(None),
        s if s.eq_ignore_ascii_case("cluster") => Ok(Some(Object::Cluster)),
        // Digits only: `u32::from_str` would also take a leading `+`.
        s if s.bytes().all(|b| b.is_ascii_digit()) => s
            .parse()
            .map(|p| Some(Object::Partition(p)))
            .map_err(|_| LineProblem::BadObject {
                object: s.to_string(),
            }),
        s => Err(LineProblem::BadObject {
            object: s.to_string(),
        }),
    }
}

fn parse_action(field: &str) -> Result<Option<Action>, LineProblem> {
    match field {
        "" => Err(LineProblem::EmptyField { field: "action" }),
        "*" => Ok(None),
        s => Action::parse(s)
            .map(Some)
            .ok_or_else(|| LineProblem::UnknownAction {
                action: s.to_string(),
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(subject: &str) -> Identity {
        Identity {
            subject: subject.to_string(),
            is_node: false,
        }
    }

    fn node(subject: &str) -> Identity {
        Identity {
            subject: subject.to_string(),
            is_node: true,
        }
    }

    fn parse(text: &str) -> Acl {
        Acl::parse(text, Path::new("test.acl")).expect("valid ACL")
    }

    fn problem(text: &str) -> (usize, LineProblem) {
        match Acl::parse(text, Path::new("test.acl")) {
            Err(AclError::Line { line, problem, .. }) => (line, problem),
            other => panic!("expected a line error for {text:?}, got {other:?}"),
        }
    }

    const EXAMPLE: &str = "\
# subject, object, action
alice, 3, produce   # only partition 3

alice,*,consume
  ops , cluster , admin
*, cluster, consume
n1, *, *
";

    #[test]
    fn a_good_file_grants_exactly_its_rules() {
        let acl = parse(EXAMPLE);
        assert_eq!(acl.len(), 5);
        let alice = client("alice");
        assert!(acl.allows(&alice, Object::Partition(3), Action::Produce));
        assert!(!acl.allows(&alice, Object::Partition(4), Action::Produce));
        assert!(acl.allows(&alice, Object::Partition(4), Action::Consume));
        assert!(acl.allows(&alice, Object::Cluster, Action::Consume));
        assert!(!acl.allows(&alice, Object::Cluster, Action::Admin));
        assert!(acl.allows(&client("ops"), Object::Cluster, Action::Admin));
        assert!(!acl.allows(&client("ops"), Object::Partition(0), Action::Admin));
    }

    #[test]
    fn an_unknown_subject_is_denied_even_with_a_node_certificate() {
        let acl = parse(EXAMPLE);
        let stranger = node("n2");
        for action in Action::ALL {
            assert!(
                !acl.allows(&stranger, Object::Partition(0), action),
                "{action}"
            );
        }
        // ...except for the rule granted to everyone.
        assert!(acl.allows(&stranger, Object::Cluster, Action::Consume));
    }

    #[test]
    fn wildcards_match_every_subject_object_and_action() {
        let acl = parse("n1, *, *\n*, 7, produce\n");
        for action in Action::ALL {
            assert!(acl.allows(&client("n1"), Object::Cluster, action));
            assert!(acl.allows(&client("n1"), Object::Partition(u32::MAX), action));
        }
        assert!(acl.allows(&client("anyone"), Object::Partition(7), Action::Produce));
        assert!(!acl.allows(&client("anyone"), Object::Partition(7), Action::Consume));
        assert!(!acl.allows(&client("anyone"), Object::Partition(8), Action::Produce));
    }

    #[test]
    fn subjects_compare_exactly() {
        let acl = parse("alice, *, *\n");
        assert!(!acl.allows(&client("Alice"), Object::Partition(0), Action::Produce));
        assert!(!acl.allows(&client("alice2"), Object::Partition(0), Action::Produce));
    }

    #[test]
    fn keywords_are_case_insensitive() {
        let acl = parse("bob, CLUSTER, Admin\n");
        assert!(acl.allows(&client("bob"), Object::Cluster, Action::Admin));
    }

    #[test]
    fn an_empty_file_denies_everything() {
        let acl = parse("# nothing granted yet\n\n   \n");
        assert!(acl.is_empty());
        assert!(!acl.allows(&node("n1"), Object::Cluster, Action::Consume));
    }

    #[test]
    fn casbin_policy_lines_with_a_leading_p_are_accepted() {
        let acl = parse("p, root, *, produce\np, root, *, consume\n");
        assert!(acl.allows(&client("root"), Object::Partition(1), Action::Produce));
        assert!(!acl.allows(&client("root"), Object::Partition(1), Action::Admin));
    }

    #[test]
    fn a_line_with_the_wrong_number_of_fields_is_refused() {
        assert_eq!(
            problem("alice, 3\n"),
            (1, LineProblem::FieldCount { found: 2 })
        );
        assert_eq!(
            problem("ok, *, *\nalice, 3, produce, extra\n"),
            (2, LineProblem::FieldCount { found: 4 })
        );
        assert_eq!(
            problem("\n\nalice\n"),
            (3, LineProblem::FieldCount { found: 1 })
        );
    }

    #[test]
    fn an_unknown_action_is_refused() {
        assert_eq!(
            problem("alice, 3, write\n"),
            (
                1,
                LineProblem::UnknownAction {
                    action: "write".into()
                }
            )
        );
    }

    #[test]
    fn a_bad_object_is_refused() {
        for object in ["-1", "+3", "4294967296", "partition3", "3.0", "clusters"] {
            assert_eq!(
                problem(&format!("alice, {object}, produce\n")),
                (
                    1,
                    LineProblem::BadObject {
                        object: object.into()
                    }
                ),
                "{object}"
            );
        }
    }

    #[test]
    fn empty_fields_are_refused() {
        assert_eq!(
            problem(", 3, produce"),
            (1, LineProblem::EmptyField { field: "subject" })
        );
        assert_eq!(
            problem("a, , produce"),
            (1, LineProblem::EmptyField { field: "object" })
        );
        assert_eq!(
            problem("a, 3, "),
            (1, LineProblem::EmptyField { field: "action" })
        );
    }

    #[test]
    fn a_subject_longer_than_a_common_name_is_refused() {
        let long = "x".repeat(SUBJECT_BYTES_MAX + 1);
        assert_eq!(
            problem(&format!("{long}, *, *")),
            (1, LineProblem::SubjectTooLong { subject: long })
        );
    }

    #[test]
    fn line_errors_name_the_file_and_line() {
        let err = Acl::parse("a, *, *\nb, 2, fly\n", Path::new("/etc/corelog.acl"))
            .expect_err("bad action");
        let message = err.to_string();
        assert!(message.starts_with("/etc/corelog.acl:2: "), "{message}");
        assert!(message.contains("\"fly\""), "{message}");
    }

    #[test]
    fn default_policy_lets_any_certificate_produce_consume_and_read_metadata() {
        let policy = Policy::Default;
        let alice = client("alice");
        assert!(policy.allows(&alice, Object::Partition(0), Action::Produce));
        assert!(policy.allows(&alice, Object::Partition(9), Action::Consume));
        assert!(policy.allows(&alice, Object::Cluster, Action::Consume));
        assert!(!policy.allows(&alice, Object::Cluster, Action::Produce));
    }

    #[test]
    fn default_policy_reserves_admin_and_replicate_for_node_certificates() {
        let policy = Policy::Default;
        for object in [Object::Cluster, Object::Partition(0)] {
            for action in [Action::Admin, Action::Replicate] {
                assert!(!policy.allows(&client("alice"), object, action));
                assert!(policy.allows(&node("n1"), object, action));
            }
        }
    }

    #[test]
    fn no_acl_file_means_the_default_policy() {
        assert_eq!(
            Policy::from_acl_file(None).expect("no file"),
            Policy::Default
        );
    }
}
