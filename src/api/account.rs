//! `sigil.v1.AccountService`: whitelist, anti-phishing code, protection report.
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::require;
use super::blocking;
use crate::core::Sigil;
use crate::pb;

/// `sigil.v1.AccountService`.
#[derive(Clone)]
pub struct AccountApi {
    sigil: Arc<Sigil>,
}

impl AccountApi {
    /// Wraps a Sigil.
    pub fn new(sigil: Arc<Sigil>) -> Self {
        Self { sigil }
    }
}

#[tonic::async_trait]
impl pb::account_service_server::AccountService for AccountApi {
    async fn add_address(
        &self,
        req: Request<pb::AddAddressRequest>,
    ) -> Result<Response<pb::AddAddressResponse>, Status> {
        let role = require(&req, "AccountService/AddAddress")?;
        let r = req.into_inner();
        let s = self.sigil.clone();
        let a = blocking(move || {
            s.ops().add_address(
                role.name(),
                &r.user_id,
                &r.asset,
                &r.network,
                &r.address,
                &r.label,
                &r.approval,
            )
        })
        .await?;
        Ok(Response::new(pb::AddAddressResponse {
            address: Some(a.into()),
        }))
    }

    async fn list_addresses(
        &self,
        req: Request<pb::ListAddressesRequest>,
    ) -> Result<Response<pb::ListAddressesResponse>, Status> {
        require(&req, "AccountService/ListAddresses")?;
        let r = req.into_inner();
        let s = self.sigil.clone();
        let list = blocking(move || s.ops().list_addresses(&r.user_id)).await?;
        Ok(Response::new(pb::ListAddressesResponse {
            addresses: list.into_iter().map(Into::into).collect(),
        }))
    }

    async fn remove_address(
        &self,
        req: Request<pb::RemoveAddressRequest>,
    ) -> Result<Response<pb::RemoveAddressResponse>, Status> {
        let role = require(&req, "AccountService/RemoveAddress")?;
        let r = req.into_inner();
        let s = self.sigil.clone();
        blocking(move || {
            s.ops()
                .remove_address(role.name(), &r.user_id, &r.network, &r.address, &r.approval)
        })
        .await?;
        Ok(Response::new(pb::RemoveAddressResponse {}))
    }

    async fn set_anti_phishing_code(
        &self,
        req: Request<pb::SetAntiPhishingCodeRequest>,
    ) -> Result<Response<pb::SetAntiPhishingCodeResponse>, Status> {
        let role = require(&req, "AccountService/SetAntiPhishingCode")?;
        let r = req.into_inner();
        let s = self.sigil.clone();
        let set_at = blocking(move || {
            s.ops()
                .set_anti_phishing_code(role.name(), &r.user_id, &r.code, &r.approval)
        })
        .await?;
        Ok(Response::new(pb::SetAntiPhishingCodeResponse { set_at }))
    }

    async fn get_account_protection_status(
        &self,
        req: Request<pb::GetAccountProtectionStatusRequest>,
    ) -> Result<Response<pb::GetAccountProtectionStatusResponse>, Status> {
        require(&req, "AccountService/GetAccountProtectionStatus")?;
        let r = req.into_inner();
        let s = self.sigil.clone();
        let items = blocking(move || {
            let as_of = if r.as_of == 0 { s.clock_now()? } else { r.as_of };
            s.ops().protection_status(&r.user_id, as_of)
        })
        .await?;
        Ok(Response::new(pb::GetAccountProtectionStatusResponse {
            eligible: items.iter().all(|i| i.ok),
            items: items
                .into_iter()
                .map(|i| pb::ProtectionItem {
                    name: i.name.to_string(),
                    ok: i.ok,
                    evidence: i.evidence,
                })
                .collect(),
        }))
    }
}
