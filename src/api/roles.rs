//! The one role table: every RPC of Sigil's services and the roles that
//! may call it. [`require`](super::auth::require) enforces it for every
//! handler; a test walks the service descriptors and fails on an RPC
//! without an entry, and checks the README's table against this one.
use super::auth::Role;

/// `Service/Method` → the roles allowed to call it. Anything else is
/// `PERMISSION_DENIED`. (Health and reflection admit any certificate from
/// the client CA that is not on the deny-list.)
pub const RPC_ROLES: &[(&str, &[Role])] = &[
    ("FactorService/BeginTotpEnrollment", &[Role::Frontend]),
    ("FactorService/ConfirmTotpEnrollment", &[Role::Frontend]),
    ("FactorService/ListFactors", &[Role::Frontend, Role::Admin]),
    ("FactorService/BeginWebauthnRegistration", &[Role::Frontend]),
    ("FactorService/FinishWebauthnRegistration", &[Role::Frontend]),
    ("FactorService/BeginYubikeyHmacEnrollment", &[Role::Frontend]),
    ("FactorService/BeginYubikeyOtpEnrollment", &[Role::Frontend]),
    ("FactorService/ConfirmYubikeyEnrollment", &[Role::Frontend]),
    ("FactorService/RemoveFactor", &[Role::Frontend]),
    (
        "ApprovalService/BeginApproval",
        &[Role::WithdrawalEngine, Role::Frontend],
    ),
    (
        "ApprovalService/CompleteApproval",
        &[Role::WithdrawalEngine, Role::Frontend],
    ),
    ("ApprovalService/Approve", &[Role::WithdrawalEngine, Role::Frontend]),
    ("ApprovalService/RedeemApproval", &[Role::WithdrawalEngine]),
    (
        "ApprovalService/GetApprovalKeys",
        &[Role::WithdrawalEngine, Role::Frontend, Role::Admin],
    ),
    (
        "ApprovalService/GetPendingApproval",
        &[Role::WithdrawalEngine, Role::Frontend, Role::Admin, Role::Approver],
    ),
    (
        "ApprovalService/ListPendingApprovals",
        &[Role::Frontend, Role::Admin, Role::Approver],
    ),
    ("ApprovalService/CancelApproval", &[Role::Frontend]),
    (
        "ApprovalService/GetCancellations",
        &[Role::WithdrawalEngine, Role::Frontend, Role::Admin],
    ),
    ("StaffService/AddStaff", &[Role::Admin]),
    ("StaffService/BeginStaffKeyRegistration", &[Role::Admin]),
    ("StaffService/FinishStaffKeyRegistration", &[Role::Admin]),
    ("StaffService/RemoveStaff", &[Role::Admin]),
    ("StaffService/ListStaff", &[Role::Admin, Role::Approver]),
    (
        "StaffService/GetStaffKeys",
        &[Role::WithdrawalEngine, Role::Frontend, Role::Admin, Role::Approver],
    ),
    ("StaffService/BeginStaffDecision", &[Role::Admin, Role::Approver]),
    ("StaffService/CompleteStaffDecision", &[Role::Admin, Role::Approver]),
    ("StaffService/GetPolicy", &[Role::Admin, Role::Approver]),
    ("StaffService/ProposePolicy", &[Role::Admin]),
    ("AccountService/AddAddress", &[Role::Frontend]),
    ("AccountService/ListAddresses", &[Role::Frontend, Role::Admin]),
    ("AccountService/RemoveAddress", &[Role::Frontend]),
    ("AccountService/SetAntiPhishingCode", &[Role::Frontend]),
    (
        "AccountService/GetAccountProtectionStatus",
        &[Role::Frontend, Role::Admin],
    ),
    ("AdminService/RevokeFactors", &[Role::Admin]),
    ("AdminService/SuspendApprovals", &[Role::Admin]),
    ("AdminService/ResumeApprovals", &[Role::Admin]),
    ("AdminService/ReadAudit", &[Role::Admin]),
    ("AdminService/GetAuditCheckpoints", &[Role::Admin]),
    ("AdminService/CheckpointAudit", &[Role::Admin]),
    ("AdminService/PruneAudit", &[Role::Admin]),
    ("AdminService/RotateApprovalKey", &[Role::Admin]),
    ("AdminService/ListApprovalKeys", &[Role::Admin]),
    ("AdminService/RotateSecretsKey", &[Role::Admin]),
    ("AdminService/Backup", &[Role::Admin]),
    (
        "EventService/WatchEvents",
        &[Role::Frontend, Role::Admin, Role::Approver],
    ),
    ("EventService/AckEvents", &[Role::Frontend, Role::Admin]),
];

/// The roles allowed to call `rpc` (`Service/Method`), if it is in the table.
pub fn allowed(rpc: &str) -> Option<&'static [Role]> {
    RPC_ROLES.iter().find(|(name, _)| *name == rpc).map(|(_, roles)| *roles)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use prost::Message;

    use super::*;

    /// Every RPC of every Sigil service, from the descriptors the server
    /// publishes.
    fn service_rpcs() -> Vec<String> {
        let set = prost_types::FileDescriptorSet::decode(crate::server::FILE_DESCRIPTOR_SET).unwrap();
        let mut out = Vec::new();
        for file in set.file {
            for svc in file.service {
                for m in &svc.method {
                    out.push(format!("{}/{}", svc.name(), m.name()));
                }
            }
        }
        out
    }

    #[test]
    fn every_rpc_has_exactly_one_entry() {
        let rpcs = service_rpcs();
        assert!(rpcs.len() >= 29, "{rpcs:?}");
        for rpc in &rpcs {
            let n = RPC_ROLES.iter().filter(|(name, _)| name == rpc).count();
            assert_eq!(n, 1, "{rpc} has {n} entries in the role table");
        }
        for (name, roles) in RPC_ROLES {
            assert!(
                rpcs.contains(&name.to_string()),
                "{name} is in the role table but no service has it"
            );
            assert!(!roles.is_empty(), "{name} admits nobody");
        }
    }

    /// The README's table says what this one says, row for row.
    #[test]
    fn the_readme_table_agrees() {
        let readme = include_str!("../../README.md");
        let mut rows = std::collections::BTreeMap::new();
        for line in readme.lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if cells.len() != 7 || !cells[1].contains("Service.") {
                continue;
            }
            let mut roles = Vec::new();
            for (cell, role) in
                cells[2..6]
                    .iter()
                    .zip([Role::WithdrawalEngine, Role::Frontend, Role::Admin, Role::Approver])
            {
                match *cell {
                    "✓" => roles.push(role),
                    "" => {}
                    other => panic!("README cell {other:?} in {line:?}"),
                }
            }
            rows.insert(cells[1].replacen('.', "/", 1), roles);
        }
        assert_eq!(rows.len(), RPC_ROLES.len(), "README rows: {:?}", rows.keys());
        for (name, roles) in RPC_ROLES {
            assert_eq!(rows.get(*name).map(Vec::as_slice), Some(*roles), "README row of {name}");
        }
    }
}
