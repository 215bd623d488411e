//! Kafka's ACL model and the authorizer's decision (`StandardAuthorizer`).
//!
//! A binding says: `principal` from `host` is allowed (or denied) `operation`
//! on resources of `resource_type` whose name matches `resource_name` under
//! `pattern_type` (literal, with `*` for every name, or prefixed). Deny wins
//! over allow; READ, WRITE, DELETE and ALTER imply DESCRIBE; ALTER_CONFIGS
//! implies DESCRIBE_CONFIGS; ALL is every operation. Super users may do
//! anything; a resource no binding matches is open only with
//! `allow_everyone_if_no_acl_found`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::Principal;

macro_rules! codes {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $code:expr, $text:expr;)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }
        impl $name {
            /// Kafka's wire code.
            pub fn code(self) -> i8 {
                match self { $($name::$variant => $code,)* }
            }
            /// By wire code (`None`: unknown).
            pub fn from_code(code: i8) -> Option<Self> {
                match code { $($code => Some($name::$variant),)* _ => None }
            }
            /// Kafka's name (`TOPIC`, `PREFIXED`, `DESCRIBE_CONFIGS`).
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $text,)* }
            }
            /// By Kafka's name, ignoring case.
            pub fn from_name(s: &str) -> Option<Self> {
                let s = s.to_ascii_uppercase().replace('-', "_");
                [$($name::$variant,)*].into_iter().find(|v| v.name() == s)
            }
        }
    };
}

codes!(
    /// What kind of thing a binding is about.
    ResourceType {
        /// Matches every type (filters only).
        Any = 1, "ANY";
        /// A topic.
        Topic = 2, "TOPIC";
        /// A consumer group.
        Group = 3, "GROUP";
        /// The cluster (name `kafka-cluster`).
        Cluster = 4, "CLUSTER";
        /// A transactional id.
        TransactionalId = 5, "TRANSACTIONAL_ID";
        /// A delegation token.
        DelegationToken = 6, "DELEGATION_TOKEN";
        /// A user (quotas, tokens).
        User = 7, "USER";
    }
);

codes!(
    /// How a binding's name matches resource names.
    PatternType {
        /// Matches every pattern type (filters only).
        Any = 1, "ANY";
        /// Matches what would apply to the named resource (filters only).
        Match = 2, "MATCH";
        /// The exact name, or `*` for every resource.
        Literal = 3, "LITERAL";
        /// Every resource whose name starts with the name.
        Prefixed = 4, "PREFIXED";
    }
);

codes!(
    /// What a principal does.
    Operation {
        /// Matches every operation (filters only).
        Any = 1, "ANY";
        /// Every operation.
        All = 2, "ALL";
        /// Consume, commit offsets, join a group.
        Read = 3, "READ";
        /// Produce.
        Write = 4, "WRITE";
        /// Create topics.
        Create = 5, "CREATE";
        /// Delete topics, records, groups.
        Delete = 6, "DELETE";
        /// Alter partitions, ACLs, credentials.
        Alter = 7, "ALTER";
        /// See that it exists.
        Describe = 8, "DESCRIBE";
        /// Replication between brokers.
        ClusterAction = 9, "CLUSTER_ACTION";
        /// Read configs.
        DescribeConfigs = 10, "DESCRIBE_CONFIGS";
        /// Change configs.
        AlterConfigs = 11, "ALTER_CONFIGS";
        /// Idempotent produce.
        IdempotentWrite = 12, "IDEMPOTENT_WRITE";
        /// Create delegation tokens.
        CreateTokens = 13, "CREATE_TOKENS";
        /// Describe delegation tokens.
        DescribeTokens = 14, "DESCRIBE_TOKENS";
    }
);

codes!(
    /// Allow or deny.
    Permission {
        /// Matches both (filters only).
        Any = 1, "ANY";
        /// Deny: wins over every allow.
        Deny = 2, "DENY";
        /// Allow.
        Allow = 3, "ALLOW";
    }
);

/// The cluster resource's only name.
pub const CLUSTER_NAME: &str = "kafka-cluster";
/// The name or principal that matches every name or principal.
pub const WILDCARD: &str = "*";

/// One ACL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AclBinding {
    /// Resource type (never `Any`).
    pub resource_type: ResourceType,
    /// Resource name, `*` or a prefix.
    pub resource_name: String,
    /// `Literal` or `Prefixed`.
    pub pattern_type: PatternType,
    /// `User:alice`, or `User:*` for everyone.
    pub principal: String,
    /// A client address, or `*`.
    pub host: String,
    /// The operation (never `Any`).
    pub operation: Operation,
    /// `Allow` or `Deny`.
    pub permission: Permission,
}

impl AclBinding {
    /// Why this binding cannot be stored, if it cannot (Kafka's rules for CreateAcls).
    pub fn validate(&self) -> Result<(), String> {
        if matches!(self.resource_type, ResourceType::Any) {
            return Err("resource type ANY cannot be stored".into());
        }
        if !matches!(
            self.pattern_type,
            PatternType::Literal | PatternType::Prefixed
        ) {
            return Err("pattern type must be LITERAL or PREFIXED".into());
        }
        if matches!(self.operation, Operation::Any) {
            return Err("operation ANY cannot be stored".into());
        }
        if matches!(self.permission, Permission::Any) {
            return Err("permission ANY cannot be stored".into());
        }
        if self.resource_name.is_empty() {
            return Err("resource name must not be empty".into());
        }
        if self.resource_type == ResourceType::Cluster && self.resource_name != CLUSTER_NAME {
            return Err(format!("the cluster resource is named '{CLUSTER_NAME}'"));
        }
        if self.principal != "User:*" {
            Principal::parse(&self.principal)?;
        }
        if self.host != WILDCARD && self.host.parse::<IpAddr>().is_err() {
            return Err(format!("host '{}' is not an IP address or '*'", self.host));
        }
        Ok(())
    }

    /// A stable id: the SHA-256 of its fields, so the same binding stored
    /// twice is one key in the metadata store.
    pub fn id(&self) -> String {
        use sha2::{Digest, Sha256};
        let text = format!(
            "{}\0{}\0{}\0{}\0{}\0{}\0{}",
            self.resource_type.name(),
            self.resource_name,
            self.pattern_type.name(),
            self.principal,
            self.host,
            self.operation.name(),
            self.permission.name()
        );
        Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether this binding applies to the resource `name` of its type.
    fn covers(&self, name: &str) -> bool {
        match self.pattern_type {
            PatternType::Literal => self.resource_name == WILDCARD || self.resource_name == name,
            PatternType::Prefixed => name.starts_with(&self.resource_name),
            _ => false,
        }
    }
}

/// A DescribeAcls or DeleteAcls filter; `None` fields match anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclFilter {
    /// Type, or `Any`.
    pub resource_type: ResourceType,
    /// Name.
    pub resource_name: Option<String>,
    /// Pattern type, `Any` or `Match`.
    pub pattern_type: PatternType,
    /// Principal.
    pub principal: Option<String>,
    /// Host.
    pub host: Option<String>,
    /// Operation, or `Any`.
    pub operation: Operation,
    /// Permission, or `Any`.
    pub permission: Permission,
}

impl AclFilter {
    /// Whether `b` passes this filter.
    pub fn matches(&self, b: &AclBinding) -> bool {
        let type_ok =
            self.resource_type == ResourceType::Any || self.resource_type == b.resource_type;
        let pattern_ok = match (self.pattern_type, &self.resource_name) {
            (PatternType::Any, None) => true,
            (PatternType::Any, Some(n)) => &b.resource_name == n,
            (PatternType::Match, None) => true,
            // Everything that would apply to the named resource.
            (PatternType::Match, Some(n)) => b.covers(n),
            (p, n) => p == b.pattern_type && n.as_ref().is_none_or(|n| &b.resource_name == n),
        };
        type_ok
            && pattern_ok
            && self.principal.as_ref().is_none_or(|p| p == &b.principal)
            && self.host.as_ref().is_none_or(|h| h == &b.host)
            && (self.operation == Operation::Any || self.operation == b.operation)
            && (self.permission == Permission::Any || self.permission == b.permission)
    }
}

/// The authorizer's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorizerPolicy {
    /// Principals allowed everything (`User:admin`).
    pub super_users: Vec<String>,
    /// Allow when no binding matches the resource (Kafka's
    /// `allow.everyone.if.no.acl.found`).
    pub allow_if_no_acl: bool,
}

/// Whether `principal` connecting from `host` may do `op` on the resource
/// `(resource_type, name)`, given every stored binding.
pub fn authorize<'a>(
    policy: &AuthorizerPolicy,
    acls: impl IntoIterator<Item = &'a AclBinding>,
    principal: &Principal,
    host: IpAddr,
    op: Operation,
    resource_type: ResourceType,
    name: &str,
) -> bool {
    let who = principal.to_string();
    if policy.super_users.iter().any(|s| s == &who) {
        return true;
    }
    let host = host.to_canonical().to_string();
    let mut any_for_resource = false;
    let mut allowed = false;
    for b in acls {
        if b.resource_type != resource_type || !b.covers(name) {
            continue;
        }
        any_for_resource = true;
        let principal_ok = b.principal == who || b.principal == "User:*";
        let host_ok = b.host == WILDCARD || b.host == host;
        if !principal_ok || !host_ok {
            continue;
        }
        match b.permission {
            Permission::Deny if b.operation == Operation::All || b.operation == op => return false,
            Permission::Allow if grants(b.operation, op) => allowed = true,
            _ => {}
        }
    }
    allowed || (!any_for_resource && policy.allow_if_no_acl)
}

/// Whether an allow of `granted` permits `wanted`.
fn grants(granted: Operation, wanted: Operation) -> bool {
    use Operation::*;
    granted == All
        || granted == wanted
        || (wanted == Describe && matches!(granted, Read | Write | Delete | Alter))
        || (wanted == DescribeConfigs && granted == AlterConfigs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(
        rt: ResourceType,
        name: &str,
        pt: PatternType,
        who: &str,
        op: Operation,
        perm: Permission,
    ) -> AclBinding {
        AclBinding {
            resource_type: rt,
            resource_name: name.into(),
            pattern_type: pt,
            principal: who.into(),
            host: "*".into(),
            operation: op,
            permission: perm,
        }
    }

    fn can(acls: &[AclBinding], who: &str, op: Operation, topic: &str) -> bool {
        authorize(
            &AuthorizerPolicy::default(),
            acls,
            &Principal::parse(who).unwrap(),
            "127.0.0.1".parse().unwrap(),
            op,
            ResourceType::Topic,
            topic,
        )
    }

    #[test]
    fn literal_prefixed_and_wildcard_grants() {
        use Operation::*;
        use PatternType::*;
        use ResourceType::Topic;
        let acls = vec![
            b(
                Topic,
                "orders",
                Literal,
                "User:alice",
                Write,
                Permission::Allow,
            ),
            b(
                Topic,
                "logs-",
                Prefixed,
                "User:bob",
                Read,
                Permission::Allow,
            ),
            b(Topic, "*", Literal, "User:*", Describe, Permission::Allow),
        ];
        assert!(can(&acls, "User:alice", Write, "orders"));
        assert!(!can(&acls, "User:alice", Write, "orders2"));
        assert!(!can(&acls, "User:alice", Read, "orders"));
        assert!(can(&acls, "User:bob", Read, "logs-app"));
        assert!(!can(&acls, "User:bob", Read, "log"));
        // Everyone may describe every topic; write implies describe anyway.
        assert!(can(&acls, "User:carol", Describe, "anything"));
        assert!(!can(&acls, "User:carol", Write, "anything"));
    }

    #[test]
    fn deny_wins_and_implications_hold() {
        use Operation::*;
        use PatternType::*;
        use ResourceType::Topic;
        let acls = vec![
            b(Topic, "t", Literal, "User:alice", All, Permission::Allow),
            b(Topic, "t", Literal, "User:alice", Write, Permission::Deny),
            b(
                Topic,
                "c",
                Literal,
                "User:bob",
                AlterConfigs,
                Permission::Allow,
            ),
        ];
        assert!(can(&acls, "User:alice", Read, "t"));
        assert!(!can(&acls, "User:alice", Write, "t"));
        assert!(can(&acls, "User:bob", DescribeConfigs, "c"));
        assert!(!can(&acls, "User:bob", Describe, "c"));
    }

    #[test]
    fn no_acl_super_users_and_hosts() {
        let p = Principal::user("x");
        let ip = "10.0.0.1".parse().unwrap();
        let open = AuthorizerPolicy {
            super_users: vec![],
            allow_if_no_acl: true,
        };
        let closed = AuthorizerPolicy {
            super_users: vec!["User:admin".into()],
            allow_if_no_acl: false,
        };
        let t = ResourceType::Topic;
        assert!(authorize(&open, &[], &p, ip, Operation::Write, t, "t"));
        assert!(!authorize(&closed, &[], &p, ip, Operation::Write, t, "t"));
        assert!(authorize(
            &closed,
            &[],
            &Principal::user("admin"),
            ip,
            Operation::Write,
            t,
            "t"
        ));
        let mut acl = b(
            t,
            "t",
            PatternType::Literal,
            "User:x",
            Operation::Write,
            Permission::Allow,
        );
        acl.host = "10.0.0.2".into();
        // A binding for the resource exists, so "no ACL found" does not open it.
        assert!(!authorize(&open, &[acl], &p, ip, Operation::Write, t, "t"));
    }

    #[test]
    fn filters_match_like_kafka() {
        use PatternType::*;
        let pre = b(
            ResourceType::Topic,
            "logs-",
            Prefixed,
            "User:bob",
            Operation::Read,
            Permission::Allow,
        );
        let mut f = AclFilter {
            resource_type: ResourceType::Any,
            resource_name: None,
            pattern_type: Any,
            principal: None,
            host: None,
            operation: Operation::Any,
            permission: Permission::Any,
        };
        assert!(f.matches(&pre));
        f.resource_name = Some("logs-app".into());
        assert!(!f.matches(&pre));
        f.pattern_type = Match;
        assert!(f.matches(&pre));
        f.pattern_type = Literal;
        assert!(!f.matches(&pre));
        f.pattern_type = Prefixed;
        f.resource_name = Some("logs-".into());
        assert!(f.matches(&pre));
        f.principal = Some("User:alice".into());
        assert!(!f.matches(&pre));
    }

    #[test]
    fn validation_refuses_what_kafka_refuses() {
        let ok = b(
            ResourceType::Topic,
            "t",
            PatternType::Literal,
            "User:a",
            Operation::Read,
            Permission::Allow,
        );
        assert!(ok.validate().is_ok());
        let mut bad = ok.clone();
        bad.pattern_type = PatternType::Match;
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.principal = "alice".into();
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.host = "not-an-ip".into();
        assert!(bad.validate().is_err());
        let mut bad = ok;
        bad.resource_type = ResourceType::Cluster;
        assert!(bad.validate().is_err());
    }
}
