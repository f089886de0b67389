//! Writes the seed corpus of the fuzz targets (`fuzz/seeds/<target>/`) and
//! the public fixtures they load (`fuzz/fixtures/`).
//!
//! `cargo run --example fuzz_seeds` (from the repository root). Every seed
//! is a valid input of its target, so fuzzing starts from the accepting
//! paths. Keys are drawn afresh on each run and only their public halves
//! are written: the JWS tokens are signed by a key whose JWKS goes to
//! `fuzz/fixtures/jws_keys.json`, the WebAuthn responses come from a
//! software passkey whose credential (public key) goes to
//! `fuzz/fixtures/webauthn.json` with the ceremony states. Rerunning it
//! replaces the seeds and the fixtures together.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use sigil::factor::webauthn::{StoredCredential, Webauthn, WebauthnPolicy};
use sigil::factor::yubikey::emulator::SoftYubiKey;
use sigil::store::wal_format::{encode_group, encode_record};
use sigil::store::Table;
use sigil_verify::{assemble, b64url, signing_input, Claims, Intent, Jwk, JwkSet};
use webauthn_authenticator_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse, Url};
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_authenticator_rs::WebauthnAuthenticator;

/// The issuer and audience the `jws_verify` target verifies for.
const ISSUER: &str = "https://sigil.example";
const AUDIENCE: &str = "withdrawal-engine";
/// The `iat` of the seed tokens; the target verifies at `IAT + 5`.
const IAT: i64 = 1_700_000_000;
/// The origin the `webauthn_json` target's policy allows.
const ORIGIN: &str = "https://localhost:8443";
/// The challenge of the fixture's assertion ceremony.
const CHALLENGE: [u8; 32] = [0x5a; 32];

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn intent(action: &str, amount: &str, destination: &str, memo: &str) -> Intent {
    let withdrawal = action == "withdrawal";
    Intent {
        action: action.into(),
        user_id: "alice".into(),
        withdrawal_id: if withdrawal { "wd-0001".into() } else { String::new() },
        asset: "BTC".into(),
        network: "bitcoin".into(),
        amount: amount.into(),
        destination: destination.into(),
        memo: memo.into(),
    }
}

fn claims(intent: Intent, jti: &str) -> Claims {
    Claims {
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        sub: intent.user_id.clone(),
        jti: jti.into(),
        iat: IAT,
        exp: IAT + 120,
        nbf: None,
        act: intent.action.clone(),
        intent_sha256: b64url::encode(&intent.digest()),
        intent,
        amr: vec!["otp".into()],
        webauthn: None,
        approvers: Vec::new(),
        quorum: Vec::new(),
    }
}

fn jws(seeds: &Path, fixtures: &Path) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = key.public_key().as_ref();
    let jwk = Jwk::from_p256_point(point[1..33].try_into().unwrap(), point[33..65].try_into().unwrap());
    let set = JwkSet {
        keys: vec![jwk.clone()],
    };
    write(
        fixtures,
        "jws_keys.json",
        serde_json::to_string_pretty(&set).unwrap() + "\n",
    );

    let dir = seeds.join("jws_verify");
    let all = [
        claims(
            intent("withdrawal", "0.5", "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq", ""),
            "01HZX3",
        ),
        claims(
            intent("add_address", "", "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy", ""),
            "01HZX4",
        ),
        Claims {
            nbf: Some(IAT),
            amr: vec!["hwk".into(), "user".into()],
            ..claims(
                intent("withdrawal", "1.05", "rHb9CJAWyB4rj91VRWn96DkukG4bwdtyTh", "12345"),
                "01HZX5",
            )
        },
    ];
    for (i, c) in all.iter().enumerate() {
        let input = signing_input(&jwk.kid, c);
        let sig = key.sign(&rng, input.as_bytes()).unwrap();
        write(
            &dir,
            &format!("token-{i}"),
            assemble(&input, sig.as_ref().try_into().unwrap()),
        );
        // The target signs inputs that start with '{' itself: claims seeds.
        write(&dir, &format!("claims-{i}"), serde_json::to_vec(c).unwrap());
    }
}

fn jwks(seeds: &Path) {
    let dir = seeds.join("jwks_parse");
    // RFC 7517 Appendix A.1's EC key.
    let x = b64url::decode("MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4").unwrap();
    let y = b64url::decode("4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM").unwrap();
    let a = Jwk::from_p256_point(x.as_slice().try_into().unwrap(), y.as_slice().try_into().unwrap());
    let b = Jwk::from_p256_point(&[1; 32], &[2; 32]);
    write(
        &dir,
        "one",
        serde_json::to_vec(&JwkSet { keys: vec![a.clone()] }).unwrap(),
    );
    let mut statuses = Vec::new();
    for (i, s) in ["next", "active", "retiring", "retired"].into_iter().enumerate() {
        let mut k = Jwk::from_p256_point(&[i as u8 + 3; 32], &[9; 32]);
        k.status = Some(s.into());
        statuses.push(k);
    }
    write(
        &dir,
        "statuses",
        serde_json::to_vec_pretty(&JwkSet { keys: statuses }).unwrap(),
    );
    write(&dir, "two", serde_json::to_vec(&JwkSet { keys: vec![a, b] }).unwrap());
    write(&dir, "empty", r#"{"keys":[]}"#);
}

fn intents(seeds: &Path) {
    let dir = seeds.join("intent_amount");
    // The eight intent fields in digest order, then a second amount; one per line.
    let lines: [[&str; 9]; 5] = [
        [
            "withdrawal",
            "alice",
            "wd-0001",
            "BTC",
            "bitcoin",
            "0.5",
            "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq",
            "",
            "0.50000001",
        ],
        [
            "withdrawal",
            "bob",
            "wd-2",
            "ETH",
            "ethereum",
            "1234567.000000000000000001",
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "",
            "12",
        ],
        [
            "withdrawal",
            "carol",
            "wd-3",
            "XRP",
            "xrpl",
            "1.05",
            "rHb9CJAWyB4rj91VRWn96DkukG4bwdtyTh",
            "4294967295",
            "1.5",
        ],
        [
            "add_address",
            "dave",
            "",
            "USDT",
            "tron",
            "",
            "TNPeeaaFB7K9cmo4uQpcU32zGK8G1NYqeL",
            "",
            "100",
        ],
        [
            "remove_factor",
            "erin",
            "",
            "",
            "",
            "",
            "",
            "totp:phone",
            "0.000000000000000001",
        ],
    ];
    for (i, l) in lines.iter().enumerate() {
        write(&dir, &format!("intent-{i}"), l.join("\n"));
    }
}

fn addresses(seeds: &Path) {
    let dir = seeds.join("address");
    // A format digit (0 bitcoin, 1 evm, 2 xrpl, 3 tron, 4 solana), then the address.
    let all = [
        "0bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq",
        "0BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4",
        "03J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy",
        "01A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa",
        "10x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "10xde709f2102306220921060314715629080e2fb77",
        "2rHb9CJAWyB4rj91VRWn96DkukG4bwdtyTh",
        "3TNPeeaaFB7K9cmo4uQpcU32zGK8G1NYqeL",
        "411111111111111111111111111111111",
        "44Nd1mBQtrMJVYVfKf2PJy9NZUZdTAsp7D4xWLs4gDB4T",
    ];
    for (i, a) in all.iter().enumerate() {
        write(&dir, &format!("address-{i}"), a);
    }
}

fn totp(seeds: &Path) {
    let dir = seeds.join("totp_otpauth");
    // issuer, account, secret bytes, code, Unix time, last step; one per line.
    let all = [
        "Sigil\nalice\n12345678901234567890\n287082\n59\n",
        "Example Exchange\nbob@example.com\nGEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\n094287\n1111111109\n37037035",
        "ACME:Co\nuser:with:colons&more?\n\u{ff}\u{0}binary\n000000\n-1\n",
    ];
    for (i, t) in all.iter().enumerate() {
        write(&dir, &format!("totp-{i}"), t);
    }
}

fn yubikey(seeds: &Path) {
    let dir = seeds.join("yubikey_otp");
    // The target's key and private id (test values, see the target).
    let mut yk = SoftYubiKey::with_seed("vvccccdvvbcc", [1, 2, 3, 4, 5, 6], [0x11; 16], 1).unwrap();
    for i in 0..3 {
        write(&dir, &format!("otp-{i}"), yk.otp());
    }
    write(
        &dir,
        "csv-traditional",
        "Yubico OTP,12/11/2013 11:10,1,vvgutbiedkvi,ab86c04de6a3,d26a7c0f85fdda28bd816e406342b214,,,0,0,0,0,0,0,0,0,0,0",
    );
    write(
        &dir,
        "csv-yubico",
        "508326,cccccccccccc,83cebdfb7b93,a47c5bf9c152202f577be6721c0113af,,2013-12-12T08:43:17,",
    );
}

fn webauthn(seeds: &Path, fixtures: &Path) {
    let policy = WebauthnPolicy {
        origins: vec![ORIGIN.into()],
        require_uv_for: Vec::new(),
        attestation: "none".into(),
        ..WebauthnPolicy::default()
    };
    let rp = Webauthn::new(&policy).unwrap();
    let mut authenticator = SoftPasskey::new(false);
    let origin = Url::parse(ORIGIN).unwrap();

    let (options, registration_state) = rp.begin_registration(&[7u8; 16], "alice", "Alice", &[]).unwrap();
    let ccr: CreationChallengeResponse = serde_json::from_str(&options).unwrap();
    let registration = serde_json::to_string(&authenticator.do_registration(origin.clone(), ccr).unwrap()).unwrap();
    let credential: StoredCredential = rp.finish_registration(&registration_state, &registration).unwrap();

    let (options, assertion_state) = rp
        .begin_assertion(std::slice::from_ref(&credential), &CHALLENGE, false)
        .unwrap();
    let rcr: RequestChallengeResponse = serde_json::from_str(&options).unwrap();
    let assertion = serde_json::to_string(&authenticator.do_authentication(origin, rcr).unwrap()).unwrap();
    rp.finish_assertion(&assertion_state, &assertion, std::slice::from_ref(&credential))
        .unwrap();

    let fixture = serde_json::json!({
        "origin": ORIGIN,
        "registration_state": registration_state,
        "assertion_state": assertion_state,
        "credential": credential,
    });
    write(
        fixtures,
        "webauthn.json",
        serde_json::to_string_pretty(&fixture).unwrap() + "\n",
    );

    let dir = seeds.join("webauthn_json");
    write(&dir, "registration", format!("R{registration}"));
    write(&dir, "assertion", format!("A{assertion}"));

    // The binary parts, for the CBOR target.
    let dir = seeds.join("webauthn_cbor");
    let reg: serde_json::Value = serde_json::from_str(&registration).unwrap();
    let attestation = b64url::decode(reg["response"]["attestationObject"].as_str().unwrap()).unwrap();
    write(&dir, "attestation-object", &attestation);
    let asn: serde_json::Value = serde_json::from_str(&assertion).unwrap();
    let auth_data = b64url::decode(asn["response"]["authenticatorData"].as_str().unwrap()).unwrap();
    write(&dir, "authenticator-data", &auth_data);
    let cose_key = cose_key_of(&attestation);
    write(&dir, "cose-key", cose_key);
}

/// The COSE_Key of the attested credential data in an attestation object.
fn cose_key_of(attestation_object: &[u8]) -> Vec<u8> {
    let facts = sigil::factor::webauthn::read_attestation_object(attestation_object).unwrap();
    // authData: rpIdHash 32, flags 1, signCount 4, AAGUID 16, idLen 2, id, key.
    let v: serde_cbor_2::Value = serde_cbor_2::from_slice(attestation_object).unwrap();
    let serde_cbor_2::Value::Map(m) = v else {
        panic!("not a map")
    };
    let Some(serde_cbor_2::Value::Bytes(auth)) = m.get(&serde_cbor_2::Value::Text("authData".into())) else {
        panic!("no authData")
    };
    let start = 37 + 16 + 2 + facts.credential_id.len();
    auth[start..].to_vec()
}

fn wal(seeds: &Path) {
    let dir = seeds.join("wal_record");
    let put = |t: Table, k: &str, v: &str| (t, k.as_bytes().to_vec(), Some(v.as_bytes().to_vec()));
    let one = encode_record(7, &[put(Table::Factors, "alice\0f1", "{\"v\":1}")]);
    let two = encode_record(
        8,
        &[
            put(Table::Meta, "epoch", "3"),
            (Table::Challenges, b"ch-1".to_vec(), None),
            put(Table::Credentials, "cred", "alice\0f1"),
        ],
    );
    // The first byte picks the target's mode: R record, G group, F file, P payload, Q payloads.
    write(&dir, "record", [b"R".as_slice(), &one].concat());
    let mut both = one.clone();
    both.extend_from_slice(&two);
    let group = encode_group(&both).unwrap();
    write(&dir, "group", [b"G".as_slice(), &group].concat());
    let mut file = b"SIGILWAL".to_vec();
    file.extend_from_slice(&2u32.to_be_bytes());
    let crc = crc32c(&file);
    file.extend_from_slice(&crc.to_be_bytes());
    file.extend_from_slice(&group);
    file.extend_from_slice(&[0u8; 64]);
    write(&dir, "file", [b"F".as_slice(), &file].concat());
    // A payload (without its framing): the target frames it with a good checksum.
    write(&dir, "payload", [b"P".as_slice(), &two[8..]].concat());
    // Payloads after a one-byte length each: the target seals them into a group.
    let mut sealed = b"Q".to_vec();
    for r in [&one, &two] {
        sealed.push(u8::try_from(r.len() - 8).unwrap());
        sealed.extend_from_slice(&r[8..]);
    }
    write(&dir, "payloads", sealed);
}

/// CRC-32C (Castagnoli), the log's checksum: only for the file header seed.
fn crc32c(data: &[u8]) -> u32 {
    crc::Crc::<u32>::new(&crc::CRC_32_ISCSI).checksum(data)
}

fn main() {
    let root: PathBuf = std::env::args()
        .nth(1)
        .map_or_else(|| PathBuf::from("fuzz"), PathBuf::from);
    let seeds = root.join("seeds");
    let fixtures = root.join("fixtures");
    jws(&seeds, &fixtures);
    jwks(&seeds);
    intents(&seeds);
    addresses(&seeds);
    totp(&seeds);
    yubikey(&seeds);
    webauthn(&seeds, &fixtures);
    wal(&seeds);
    println!("seeds in {}, fixtures in {}", seeds.display(), fixtures.display());
}
