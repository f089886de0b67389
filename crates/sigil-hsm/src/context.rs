//! The process-wide PKCS#11 contexts: one per module path, initialised once.
//!
//! PKCS#11 allows one `C_Initialize` per module per process, and the login
//! state of a token is shared by every session the process has on it. So
//! every [`crate::Hsm`] (and `init_token`, `token_exists`) for a module goes
//! through the single [`Module`] registered here. It is finalised and
//! initialised again only to heal an outage ([`Module::reinitialize`]): some
//! modules (SoftHSM among them) read their tokens at `C_Initialize` and see a
//! token that went away and came back only after that.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, RwLockReadGuard};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use ring::hmac;
use secrecy::{ExposeSecret, SecretString};

use crate::error::{from_pkcs11, At, HsmError};

/// One loaded and initialised PKCS#11 module.
pub(crate) struct Module {
    /// The path the module was registered under (canonical when possible).
    path: PathBuf,
    ctx: Pkcs11,
    /// Serialises token creation (SoftHSM offers one free slot at a time) and
    /// key creation/destruction ("does the label exist? then create").
    admin: Mutex<()>,
    /// Per-process key for remembering which user PIN logged in (see
    /// [`Module::login_user`]).
    login_key: hmac::Key,
    /// Slot id → HMAC of the user PIN that last logged in successfully.
    logins: Mutex<HashMap<u64, hmac::Tag>>,
    /// Every PKCS#11 call holds this shared; [`Module::reinitialize`] holds
    /// it exclusively, so no session is in use across `C_Finalize`.
    gate: RwLock<()>,
    /// How many times the module was initialised again. Sessions opened
    /// under an earlier value died with `C_Finalize`.
    generation: AtomicU64,
}

/// Held while using the module: [`Module::reinitialize`] waits for it.
pub(crate) struct Entered<'m> {
    _guard: RwLockReadGuard<'m, ()>,
    /// The module initialisation this holder works in.
    pub generation: u64,
}

fn registry() -> MutexGuard<'static, HashMap<PathBuf, Arc<Module>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<PathBuf, Arc<Module>>>> = OnceLock::new();
    REGISTRY
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Lock a mutex whose data stays consistent even if a holder panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Module {
    /// The registered module for `path`, loading and initialising it on first
    /// use. A failed load is not cached: fix the path and call again.
    pub(crate) fn get(path: &Path) -> Result<Arc<Module>, HsmError> {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mut reg = registry();
        if let Some(m) = reg.get(&key) {
            return Ok(Arc::clone(m));
        }
        let at = At {
            module: path,
            token: None,
            key: None,
            doing: "loading the PKCS#11 module",
        };
        if !path.exists() {
            return Err(HsmError::Unavailable(format!(
                "PKCS#11 module {} does not exist: install softhsm2 (apt-get install softhsm2) \
                 or point SIGIL_PKCS11_MODULE at the HSM vendor's PKCS#11 library",
                path.display()
            )));
        }
        let ctx = Pkcs11::new(path).map_err(|e| from_pkcs11(e, at))?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) => {}
            // Someone else in this process initialised the library (e.g. the
            // same .so reached through a different path): share it.
            Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {
                tracing::debug!(module = %path.display(), "PKCS#11 module already initialised");
            }
            Err(e) => return Err(from_pkcs11(e, at)),
        }
        tracing::info!(module = %path.display(), "PKCS#11 module initialised");
        let rng = ring::rand::SystemRandom::new();
        let login_key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .map_err(|_| HsmError::Unavailable("the system random generator failed; check /dev/urandom".into()))?;
        let module = Arc::new(Module {
            path: key.clone(),
            ctx,
            admin: Mutex::new(()),
            login_key,
            logins: Mutex::new(HashMap::new()),
            gate: RwLock::new(()),
            generation: AtomicU64::new(0),
        });
        reg.insert(key, Arc::clone(&module));
        Ok(module)
    }

    /// The cryptoki context.
    pub(crate) fn ctx(&self) -> &Pkcs11 {
        &self.ctx
    }

    /// Enter the module for PKCS#11 calls (shared with other callers,
    /// excluded with [`Module::reinitialize`]). Do not enter twice on one
    /// thread: a waiting re-initialisation would block the second entry.
    pub(crate) fn enter(&self) -> Entered<'_> {
        let guard = self.gate.read().unwrap_or_else(PoisonError::into_inner);
        Entered {
            _guard: guard,
            generation: self.generation.load(Ordering::Acquire),
        }
    }

    /// Enter the module alone: waits until no PKCS#11 call of the process
    /// is in progress and holds every other one off. For calls that end
    /// sessions other threads may be using (SoftHSM frees a session's state
    /// in `C_CloseAllSessions` even while another thread is inside it).
    pub(crate) fn enter_alone(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.gate.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// `C_Finalize` then `C_Initialize`: every session of the process on
    /// this module ends and the module looks at its tokens afresh. Waits
    /// until no PKCS#11 call is in progress. Logins are forgotten: the next
    /// session logs in again.
    pub(crate) fn reinitialize(&self) -> Result<(), HsmError> {
        let _excl = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        let at = At {
            module: &self.path,
            token: None,
            key: None,
            doing: "re-initialising the PKCS#11 module",
        };
        if let Err(e) = self.ctx.clone().finalize() {
            // Not initialised (an earlier attempt failed half-way): fine.
            tracing::debug!(module = %self.path.display(), error = %e, "C_Finalize failed (ignored)");
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        lock(&self.logins).clear();
        match self
            .ctx
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        {
            Ok(()) | Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {
                tracing::info!(module = %self.path.display(), "PKCS#11 module initialised again");
                Ok(())
            }
            Err(e) => Err(from_pkcs11(e, at)),
        }
    }

    /// `C_CloseAllSessions` on `slot`: every session this process has on the
    /// token, whichever handle opened it, ends (and the login with them).
    /// cryptoki does not wrap this call, so it goes through the raw
    /// interface of the same library.
    #[allow(unsafe_code)]
    pub(crate) fn close_all_sessions_raw(&self, slot: Slot, token: &str) -> Result<(), HsmError> {
        // SAFETY: `Pkcs11::new` loads the library this module loaded already
        // (the loader hands back the same, initialised instance) and resolves
        // its symbols; the one call takes a slot id the module listed and no
        // pointers. The library stays loaded through `self.ctx`.
        let rv = unsafe {
            let raw = cryptoki_sys::Pkcs11::new(&self.path).map_err(|e| {
                HsmError::Unavailable(format!(
                    "PKCS#11 module {} cannot be loaded again: {e}",
                    self.path.display()
                ))
            })?;
            raw.C_CloseAllSessions(slot.id() as cryptoki_sys::CK_SLOT_ID)
        };
        if rv == cryptoki_sys::CKR_OK {
            Ok(())
        } else {
            Err(HsmError::Unavailable(format!(
                "closing every session on token '{token}' in module {} failed (CK_RV {rv:#x})",
                self.path.display()
            )))
        }
    }

    /// Hold this while creating tokens.
    pub(crate) fn admin_lock(&self) -> MutexGuard<'_, ()> {
        lock(&self.admin)
    }

    fn at<'a>(&'a self, token: &'a str, doing: &'static str) -> At<'a> {
        At {
            module: &self.path,
            token: Some(token),
            key: None,
            doing,
        }
    }

    /// The slot holding the initialised token labelled `label`, if any.
    pub(crate) fn find_token(&self, label: &str) -> Result<Option<Slot>, HsmError> {
        let slots = self
            .ctx
            .get_slots_with_token()
            .map_err(|e| from_pkcs11(e, self.at(label, "listing slots")))?;
        for slot in slots {
            match self.ctx.get_token_info(slot) {
                Ok(info) if info.token_initialized() && info.label() == label => return Ok(Some(slot)),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(slot = slot.id(), error = %e, "cannot read token info; skipping slot");
                }
            }
        }
        Ok(None)
    }

    /// A slot whose token is present but not initialised (SoftHSM always
    /// keeps one).
    pub(crate) fn find_free_slot(&self, label: &str) -> Result<Option<Slot>, HsmError> {
        let slots = self
            .ctx
            .get_slots_with_token()
            .map_err(|e| from_pkcs11(e, self.at(label, "listing slots")))?;
        for slot in slots {
            if let Ok(info) = self.ctx.get_token_info(slot) {
                if !info.token_initialized() {
                    return Ok(Some(slot));
                }
            }
        }
        Ok(None)
    }

    /// Open a read/write session on `slot` and log the user in.
    pub(crate) fn open_user_session(&self, slot: Slot, token: &str, pin: &SecretString) -> Result<Session, HsmError> {
        let session = self
            .ctx
            .open_rw_session(slot)
            .map_err(|e| from_pkcs11(e, self.at(token, "opening a session")))?;
        self.login_user(&session, slot, token, pin)?;
        Ok(session)
    }

    /// `C_Login` as user, tolerating `CKR_USER_ALREADY_LOGGED_IN`.
    ///
    /// The login state is per token per process, so "already logged in" says
    /// nothing about *this* PIN. To stay fail-closed we remember an HMAC (under
    /// a random per-process key) of the PIN that last logged in to the slot and
    /// accept "already logged in" only for that same PIN.
    pub(crate) fn login_user(
        &self,
        session: &Session,
        slot: Slot,
        token: &str,
        pin: &SecretString,
    ) -> Result<(), HsmError> {
        let pin_bytes = pin.expose_secret().as_bytes();
        match session.login(UserType::User, Some(pin)) {
            Ok(()) => {
                let tag = hmac::sign(&self.login_key, pin_bytes);
                lock(&self.logins).insert(slot.id(), tag);
                Ok(())
            }
            Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                let known = lock(&self.logins).get(&slot.id()).copied();
                match known {
                    Some(tag) if hmac::verify(&self.login_key, pin_bytes, tag.as_ref()).is_ok() => Ok(()),
                    _ => Err(HsmError::Unavailable(format!(
                        "login to token '{token}' in module {} refused: this process is \
                         already logged in to the token with a different user PIN; check the \
                         configured PIN",
                        self.path.display()
                    ))),
                }
            }
            Err(e) => Err(from_pkcs11(e, self.at(token, "logging in"))),
        }
    }
}
