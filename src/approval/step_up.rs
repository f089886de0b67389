use sigil_verify::Intent;

use super::*;
use crate::protect::Snapshot;
use crate::store::Batch;

impl Approvals {
    /// Checks a step-up approval for `action` by `user_id` whose intent
    /// passes `fits`, and adds its redemption to `batch`.
    pub(crate) fn step_up(
        &self,
        token: &str,
        action: Action,
        user_id: &str,
        snap: &Snapshot,
        fits: impl Fn(&Intent) -> Result<(), String>,
        batch: &mut Batch,
    ) -> Result<(), Error> {
        if token.is_empty() {
            return Err(Error::denied(
                Reason::StepUpRequired,
                format!(
                    "this needs an approval of action '{}' by user '{user_id}' (step_up_approval / approval field)",
                    action.name()
                ),
            ));
        }
        let now = self.k.now()?;
        let claims = self
            .k
            .signer
            .verifier()
            .verify(token, now)
            .map_err(|e| match verify_error(e) {
                Error::InvalidArgument { reason, .. } => Error::invalid("approval", reason),
                other => other,
            })?;
        if claims.act != action.name() || claims.sub != user_id {
            return Err(Error::denied(
                Reason::StepUpRequired,
                format!(
                    "the approval is for action '{}' of user '{}'; this needs action '{}' of user '{user_id}'",
                    claims.act,
                    claims.sub,
                    action.name()
                ),
            ));
        }
        fits(&claims.intent).map_err(|why| {
            Error::denied(
                Reason::StepUpRequired,
                format!("the approval was given for something else: {why}"),
            )
        })?;
        self.add_redeem(&claims, snap, now, batch)
    }
}
