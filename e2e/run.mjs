// End-to-end test of the demo exchange (examples/demo) against a real
// sigild, in Debian's headless Chromium driven by playwright-core, with a
// CDP WebAuthn virtual authenticator. Run by `make e2e`.
//
// It starts its own sigild (own SoftHSM token via `sigil hsm init`, own
// sled store, the dev certificates of certs/out) with short holds, and two
// demo backends: one on an origin Sigil's [webauthn] config lists, one on
// an origin it does not. Its policy holds BTC withdrawals above 5 for one of
// the staff members alice and bob, and above 50 also for a short delay: the
// staff view adds alice with a security key of her own (a second virtual
// authenticator) and approves or cancels them. Screenshots of every step go
// to target/e2e-artifacts/ (git-ignored).
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import net from 'node:net';
import { createHmac } from 'node:crypto';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const TARGET = process.env.CARGO_TARGET_DIR || join(ROOT, 'target');
const BIN = join(TARGET, 'debug');
const CERTS = join(ROOT, 'certs/out');
const ART = process.env.E2E_ARTIFACTS || join(TARGET, 'e2e-artifacts');
const HOLD = 8; // address hold, seconds
const DELAY = 3; // the delay of withdrawals above 50 BTC once staff approved, seconds
// The AAGUID of Chromium's CTAP2 virtual authenticator.
const CHROMIUM_AAGUID = '01020304-0506-0708-0102-030405060708';
const t0 = Date.now();
const children = [];
let step = 0;

function log(...a) { console.log(`[e2e ${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...a); }

function freePort() {
  return new Promise((res, rej) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => res(p)); });
    s.on('error', rej);
  });
}

/// Spawns `cmd` and resolves with the first stdout line matching `ready`.
function start(name, cmd, args, env, ready) {
  return new Promise((res, rej) => {
    const c = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(c);
    let out = '';
    const timer = setTimeout(() => rej(new Error(`${name} not ready in 60 s; said: ${out}`)), 60000);
    c.stdout.on('data', (d) => {
      out += d;
      if (ready.test(out)) { clearTimeout(timer); res(c); }
    });
    c.stderr.on('data', (d) => { if (process.env.E2E_VERBOSE) process.stderr.write(`${name}: ${d}`); });
    c.on('exit', (code) => { clearTimeout(timer); rej(new Error(`${name} exited (${code}); said: ${out}`)); });
  });
}

function cleanup() {
  for (const c of children) { try { c.kill('SIGTERM'); } catch { /* gone */ } }
}

/// SIGTERM to every child, then waits (up to 10 s each) until it exited.
async function stopAll() {
  cleanup();
  await Promise.all(children.map((c) => (c.exitCode !== null || c.signalCode !== null) ? null : new Promise((res) => {
    const t = setTimeout(() => { try { c.kill('SIGKILL'); } catch { /* gone */ } res(); }, 10000);
    c.once('exit', () => { clearTimeout(t); res(); });
  })));
}
process.on('exit', cleanup);
process.on('SIGINT', () => { cleanup(); process.exit(130); });

async function shot(page, name) {
  step += 1;
  const file = join(ART, `${String(step).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  log('screenshot', file);
}

/// Waits for the page's notice (or the staff view's: `where`) and returns
/// its text.
async function noticeReason(page, expect, what, where = '#notice') {
  const sel = `${where} > div[data-reason="${expect}"]`;
  try {
    await page.waitForSelector(sel, { timeout: 20000 });
  } catch (e) {
    const got = await page.locator(where).innerText().catch(() => '?');
    throw new Error(`${what}: expected ${expect}, the page says: ${got}`);
  }
  const text = await page.locator(where).innerText();
  log(`${what}: ${text.replace(/\s+/g, ' ').slice(0, 300)}`);
  return text;
}

/// Waits for `sel`; on a timeout, says what the page's notice says.
async function waitFor(page, sel, what, timeout = 20000) {
  try {
    await page.waitForSelector(sel, { timeout });
  } catch (e) {
    const got = await page.locator('#notice').innerText().catch(() => '?');
    throw new Error(`${what}: ${sel} did not appear; the page says: ${got}`);
  }
}

/// Clears the notice so the next wait sees only the next answer.
async function clearNotice(page, id = 'notice') { await page.evaluate((i) => { document.getElementById(i).innerHTML = ''; }, id); }

async function virtualAuthenticator(context, page, opts = {}) {
  const cdp = await context.newCDPSession(page);
  await cdp.send('WebAuthn.enable', { enableUI: false });
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2', transport: 'usb', hasResidentKey: true, hasUserVerification: true,
      isUserVerified: true, automaticPresenceSimulation: true, ...opts,
    },
  });
  return { cdp, authenticatorId };
}

/// An attestation root no authenticator chains to: a CA made here with a
/// key drawn for this run (nothing secret is kept in the repository). Under
/// an allow-list rooted in it, every model is refused; the test shows the
/// refusal of a model the list does not name.
function throwawayAttestationRoot(dir) {
  const key = join(dir, 'attestation-root.key');
  const root = join(dir, 'attestation-root.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', key, '-sha256', '-days', '1', '-out', root, '-subj', '/CN=e2e attestation root',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], { stdio: ['ignore', 'ignore', 'inherit'] });
  return root;
}

/// A sigild of its own in `dir` (token made with `sigil hsm init`, store,
/// the shared development certificates) on `port`, accepting WebAuthn from
/// `origin`, with `webauthn` as further lines of its `[webauthn]` section
/// and `sections` after it. Resolves with its URL.
async function startSigild(name, dir, port, origin, webauthn, sections = []) {
  mkdirSync(join(dir, 'tokens'), { recursive: true });
  writeFileSync(join(dir, 'softhsm2.conf'),
    `directories.tokendir = ${join(dir, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`);
  writeFileSync(join(dir, 'sigil.toml'), [
    'version = 1',
    '[protection]',
    `address_hold_seconds = ${HOLD}`,
    'security_change_lock_seconds = 1',
    'sweep_interval_seconds = 1',
    '[webauthn]',
    'rp_id = "localhost"',
    `origins = ["${origin}"]`,
    'attestation = "direct"',
    ...webauthn,
    ...sections,
    '',
  ].join('\n'));
  const env = {
    SOFTHSM2_CONF: join(dir, 'softhsm2.conf'),
    SIGIL_HSM_PIN: 'e2e-user-pin-1',
    SIGIL_HSM_SO_PIN: 'e2e-so-pin-1',
    SIGIL_STORE_PATH: join(dir, 'data/sled'),
    SIGIL_TLS_CERT: join(CERTS, 'server.pem'),
    SIGIL_TLS_KEY: join(CERTS, 'server.key'),
    SIGIL_CLIENT_CA: join(CERTS, 'ca.pem'),
    SIGIL_CONFIG: join(dir, 'sigil.toml'),
    SIGIL_LISTEN: `127.0.0.1:${port}`,
    RUST_LOG: 'warn',
    NO_COLOR: '1',
  };
  execFileSync(join(BIN, 'sigil'), ['hsm', 'init'], { env: { ...process.env, ...env }, cwd: dir, stdio: ['ignore', 'ignore', 'inherit'] });
  await start(name, join(BIN, 'sigild'), [], env, /listening on https:\/\/127\.0\.0\.1:/);
  const url = `https://127.0.0.1:${port}`;
  log(name, 'up at', url);
  return url;
}

/// The main sigild's staff quorums: a new staff key counts at once (the
/// default 24 h hold is for production), and a withdrawal policy like the
/// built-in one for BTC (TOTP alone up to 1 BTC) that holds BTC above 5 for
/// one of alice and bob, and above 50 also for DELAY seconds once approved
/// (above 100 for 10 minutes: time enough to cancel, however slow the run);
/// cancellation lists lag 1 s, not 30.
const HW = '["webauthn", "yubikey_hmac", "yubikey_otp"]';
const STAFF_POLICY = [
  '[quorum]',
  'staff_key_hold_seconds = 0',
  // Sigil dates its cancellation lists this far back (default 30 s): a
  // delayed approval verifies offline from nbf + this. One sigild here.
  'cancellation_list_lag_seconds = 1',
  '[policy.actions.withdrawal]',
  'kinds = ["totp", "webauthn", "yubikey_hmac", "yubikey_otp"]',
  'deny_jailbroken = true',
  `thresholds = [{ asset = "BTC", above = "1", kinds = ${HW} }]`,
  '[[policy.actions.withdrawal.quorum]]',
  'name = "e2e-large-btc"',
  'asset = "BTC"',
  'above = "5"',
  'staff = ["alice", "bob"]',
  'required = 1',
  '[[policy.actions.withdrawal.quorum]]',
  'name = "e2e-huge-btc"',
  'asset = "BTC"',
  'above = "50"',
  `delay_seconds = ${DELAY}`,
  '[[policy.actions.withdrawal.quorum]]',
  'name = "e2e-giant-btc"',
  'asset = "BTC"',
  'above = "100"',
  'delay_seconds = 600',
];

/// RFC 6238 code (SHA-1, 6 digits, 30 s) of a base32 secret at `step`.
function totpCode(secretBase32, step) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const c of secretBase32.replace(/=+$/, '')) bits += alphabet.indexOf(c).toString(2).padStart(5, '0');
  const key = Buffer.from(bits.match(/.{8}/g).map((b) => parseInt(b, 2)));
  const msg = Buffer.alloc(8);
  msg.writeBigUInt64BE(BigInt(step));
  const h = createHmac('sha1', key).update(msg).digest();
  const o = h[19] & 0xf;
  return String((h.readUInt32BE(o) & 0x7fffffff) % 1000000).padStart(6, '0');
}
const totpStep = () => Math.floor(Date.now() / 1000 / 30);

async function signIn(page, url, name) {
  await page.goto(url);
  await page.fill('#user', name);
  await page.click('#signin-btn');
  await page.waitForSelector('#account:not([hidden])');
}

async function withdraw(page, amount) {
  await clearNotice(page);
  await page.fill('#wd-amount', amount);
  await page.click('#withdraw');
}

async function main() {
  rmSync(ART, { recursive: true, force: true });
  mkdirSync(ART, { recursive: true });
  const dir = mkdtempSync(join(tmpdir(), 'sigil-e2e-'));
  const [sigilPort, demoPort, badPort] = [await freePort(), await freePort(), await freePort()];
  const origin = `http://localhost:${demoPort}`;
  const profile = mkdtempSync(join(tmpdir(), 'sigil-e2e-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1100, height: 900 },
  });
  const sigilUrl = await startSigild('sigild', dir, sigilPort, origin, [], STAFF_POLICY);
  const demoEnv = { SIGIL_URL: sigilUrl, SIGIL_CERTS: CERTS };
  await start('demo', join(BIN, 'examples/demo'), ['--listen', `127.0.0.1:${demoPort}`], demoEnv, /demo exchange on/);
  await start('demo-other-origin', join(BIN, 'examples/demo'), ['--listen', `127.0.0.1:${badPort}`], demoEnv, /demo exchange on/);
  log('demo up at', origin);

  try {
    const page = context.pages()[0] || await context.newPage();
    page.on('pageerror', (e) => log('page error:', e.message));
    const { cdp, authenticatorId } = await virtualAuthenticator(context, page);
    const user = `alice-${Date.now()}`;

    // 1. Sign in (dev only) and enroll a security key.
    await signIn(page, origin, user);
    await shot(page, 'signed-in');
    await page.fill('#key-name', 'blue key');
    await page.click('#enroll-key');
    await noticeReason(page, 'ENROLLED', 'enroll a security key');
    await page.waitForSelector('#factors td:text("WEBAUTHN")');
    await shot(page, 'key-enrolled');

    // 2. An authenticator app as second factor (a step-up approved with the
    //    key), confirmed with its first code; the anti-phishing code set
    //    with the app's next code; then the app removed again (approved
    //    with the key).
    await page.fill('#totp-name', 'phone');
    await clearNotice(page);
    await page.click('#enroll-totp');
    await page.waitForSelector('#approve:not([hidden])');
    assert.equal(await page.locator('#ap-intent td[data-field="detail"]').innerText(), 'totp:phone');
    await page.click('#ap-key');
    await page.waitForSelector('#totp-enroll:not([hidden]) #totp-qr svg');
    await shot(page, 'totp-qr-code');
    const secret = await page.locator('#totp-secret').innerText();
    // A code answers once, and Sigil accepts the step before the current
    // one: confirm with that, approve with the current one, no waiting
    // (unless a step is about to end).
    while ((Date.now() / 1000) % 30 > 27) await page.waitForTimeout(500);
    const confirmStep = totpStep() - 1;
    await page.fill('#totp-confirm-code', totpCode(secret, confirmStep));
    await clearNotice(page);
    await page.click('#totp-confirm');
    await noticeReason(page, 'ENROLLED', 'confirm the authenticator app');
    await page.fill('#apc', 'blue-otter-42');
    await clearNotice(page);
    await page.click('#set-apc');
    await page.waitForSelector('#approve:not([hidden])');
    await page.fill('#ap-totp', totpCode(secret, confirmStep + 1));
    await page.click('#ap-totp-btn');
    await noticeReason(page, 'DONE', 'set the anti-phishing code with a TOTP code');
    await page.waitForSelector('#factors td:text("TOTP")');
    await clearNotice(page);
    await page.locator('#factors tr', { hasText: 'TOTP' }).locator('button').click();
    await page.waitForSelector('#approve:not([hidden])');
    await page.click('#ap-key');
    await noticeReason(page, 'DONE', 'remove the authenticator app');
    await page.waitForFunction(() => !document.querySelector('#factors tbody').innerText.includes('TOTP'));
    await page.waitForTimeout(1200); // the 1 s security-change lock

    // 3. Whitelist an address (approved with the key); it starts its hold.
    const dest = 'bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq';
    await page.fill('#addr-address', dest);
    await page.fill('#addr-label', 'cold wallet');
    await clearNotice(page);
    await page.click('#add-address');
    await page.waitForSelector('#approve:not([hidden])');
    assert.equal(await page.locator('#ap-code').innerText(), 'blue-otter-42', 'the approval shows the anti-phishing code');
    await page.click('#ap-key');
    await noticeReason(page, 'DONE', 'add an address');
    await page.waitForSelector('#addresses .hold');
    await shot(page, 'address-on-hold');

    // 4. Refused: the address is still in its hold (with when to retry).
    await withdraw(page, '0.5');
    const held = await noticeReason(page, 'ADDRESS_ON_HOLD', 'withdraw during the hold');
    assert.match(held, /Retry at/);
    await shot(page, 'refused-address-on-hold');

    // While the hold runs: the staff view (another tab with a security key
    // of its own) adds the staff member alice and registers her key, which
    // counts at once here (staff_key_hold_seconds = 0).
    const staffPage = await context.newPage();
    staffPage.on('pageerror', (e) => log('staff page error:', e.message));
    await virtualAuthenticator(context, staffPage);
    await staffPage.goto(`${origin}/#staff`);
    await staffPage.waitForSelector('#staff:not([hidden])');
    await staffPage.fill('#staff-id', 'alice');
    await staffPage.click('#staff-add');
    await noticeReason(staffPage, 'STAFF_ADDED', 'add the staff member alice', '#staff-notice');
    await clearNotice(staffPage, 'staff-notice');
    await staffPage.click('#staff-register');
    await noticeReason(staffPage, 'STAFF_KEY_ADDED', "register alice's security key", '#staff-notice');
    await staffPage.waitForSelector('#staff-members tr[data-staff="alice"] td[data-field="keys"]:text("1")');
    // Staff approvals count once the staff quorum (two people with keys)
    // is formed: bob registers a key too, then the view acts as alice.
    await clearNotice(staffPage, 'staff-notice');
    await staffPage.fill('#staff-id', 'bob');
    await staffPage.click('#staff-add');
    await noticeReason(staffPage, 'STAFF_ADDED', 'add the staff member bob', '#staff-notice');
    await clearNotice(staffPage, 'staff-notice');
    await staffPage.click('#staff-register');
    await noticeReason(staffPage, 'STAFF_KEY_ADDED', "register bob's security key", '#staff-notice');
    await staffPage.waitForSelector('#staff-members tr[data-staff="bob"] td[data-field="keys"]:text("1")');
    await clearNotice(staffPage, 'staff-notice');
    await staffPage.fill('#staff-id', 'alice');
    // A page in the background is hardly rendered (slow screenshots): the
    // one in use comes to the front.
    await page.bringToFront();
    const approveInStaffView = async (rid, decision, what) => {
      await staffPage.bringToFront();
      await staffPage.click('#staff-refresh');
      await staffPage.waitForSelector(`#staff-pending tr[data-request="${rid}"] button.${decision}`);
      await clearNotice(staffPage, 'staff-notice');
      await staffPage.locator(`#staff-pending tr[data-request="${rid}"] button.${decision}`).click();
      await staffPage.waitForSelector('#staff-sign:not([hidden])');
      assert.equal(await staffPage.locator('#sd-intent td[data-field="request"]').innerText(), rid);
      assert.equal(await staffPage.locator('#sd-intent td[data-field="user"]').innerText(), user);
      assert.equal(await staffPage.locator('#sd-intent td[data-field="to"]').innerText(), dest);
      const amount = await staffPage.locator('#sd-intent td[data-field="amount"]').innerText();
      if (what) await what();
      await staffPage.click('#sd-key');
      await noticeReason(staffPage, decision === 'approve' ? 'STAFF_APPROVED' : 'STAFF_CANCELLED', `${decision} ${amount} as alice`, '#staff-notice');
      await page.bringToFront();
      return amount;
    };
    /// A withdrawal the policy holds: approved with the user's key, then
    /// listed as held; returns its request id.
    const heldWithdrawal = async (amount) => {
      await withdraw(page, amount);
      await page.waitForSelector('#approve:not([hidden])');
      await page.click('#ap-key');
      const text = await noticeReason(page, 'HELD', `withdraw ${amount} BTC (held)`);
      assert.match(text, /waiting for staff approval \(0 of 1\)/);
      const row = page.locator('#held tbody tr').first();
      assert.match(await row.innerText(), new RegExp(`${amount.replace('.', '\\.')} BTC`));
      return row.getAttribute('data-request');
    };

    // 5. Wait out the hold, then withdraw: approve with the key; the
    //    engine verifies with sigil-verify and redeems.
    await page.waitForSelector('#addresses .usable', { timeout: (HOLD + 10) * 1000 });
    await shot(page, 'address-usable');
    await withdraw(page, '0.5');
    await page.waitForSelector('#approve:not([hidden])');
    assert.equal(await page.locator('#ap-intent td[data-field="amount"]').innerText(), '0.5 BTC');
    assert.equal(await page.locator('#ap-intent td[data-field="to"]').innerText(), dest);
    await shot(page, 'approve-withdrawal-what-you-sign');
    await page.locator('#approve').screenshot({ path: join(ART, 'approve-box.png') });
    let captured = null;
    const capture = (req) => { if (req.url().endsWith('/api/approval/complete')) captured = req.postData(); };
    page.on('request', capture);
    await page.click('#ap-key');
    await noticeReason(page, 'DONE', 'approve the withdrawal');
    page.off('request', capture);
    const result = JSON.parse(await page.locator('#result-json').innerText());
    assert.ok(result.redeemed && result.redeemed.redeemed_at > 0, 'the engine redeemed it');
    assert.equal(result.redeemed.replayed, false);
    assert.equal(result.verified.intent.amount, '0.5');
    assert.equal(result.verified.webauthn_evidence.ok, true, "the user's signature re-verified from the evidence");
    assert.ok(result.verified.amr.includes('hwk'));
    await shot(page, 'withdrawal-redeemed');

    // 6. Refused: the same assertion replayed (the captured request resent).
    assert.ok(captured, 'the approval request was captured');
    await clearNotice(page);
    await page.evaluate((b) => window.sigilDemo.resend(JSON.parse(b)), captured);
    await noticeReason(page, 'CHALLENGE_ALREADY_ANSWERED', 'replay the same assertion');
    await shot(page, 'refused-replay');

    // 7. Refused: the amount changed in the page's request after the user
    //    approved 0.5 (the approval commits to the intent).
    await page.route('**/api/approval/complete', async (route) => {
      const body = JSON.parse(route.request().postData());
      body.withdrawal.amount = '5';
      await route.continue({ postData: JSON.stringify(body) });
    });
    await withdraw(page, '0.5');
    await page.waitForSelector('#approve:not([hidden])');
    await page.click('#ap-key');
    const tampered = await noticeReason(page, 'INTENT_MISMATCH', 'tampered amount');
    assert.match(tampered, /amount/);
    await page.unroute('**/api/approval/complete');
    await shot(page, 'refused-tampered-amount');

    // What you see is what you sign: an amount changed on its way to the
    // backend shows in the dialog, which displays the intent Sigil bound the
    // challenge to (0.7), not the form (0.5).
    await page.route('**/api/approval/begin', async (route) => {
      const body = JSON.parse(route.request().postData());
      body.amount = '0.7';
      await route.continue({ postData: JSON.stringify(body) });
    });
    await withdraw(page, '0.5');
    await page.waitForSelector('#approve:not([hidden])');
    assert.equal(await page.locator('#ap-intent td[data-field="amount"]').innerText(), '0.7 BTC');
    assert.equal(await page.inputValue('#wd-amount'), '0.5');
    await shot(page, 'dialog-shows-the-bound-intent');
    await page.unroute('**/api/approval/begin');
    await page.click('#ap-cancel');

    // 8. Refused: user verification off. The authenticator cannot verify
    //    the user: the browser refuses (Sigil asks for UV on withdrawals)...
    await cdp.send('WebAuthn.setUserVerified', { authenticatorId, isUserVerified: false });
    await withdraw(page, '0.5');
    await page.waitForSelector('#approve:not([hidden])');
    await clearNotice(page);
    await page.click('#ap-key');
    await noticeReason(page, 'NotAllowedError', 'no user verification (browser)');
    // ... and a page that asks the authenticator not to verify gets an
    //     assertion without UV, which Sigil refuses.
    await page.route('**/api/approval/begin', async (route) => {
      const resp = await route.fetch();
      const body = await resp.json();
      if (body.webauthn) body.webauthn.publicKey.userVerification = 'discouraged';
      await route.fulfill({ response: resp, json: body });
    });
    await withdraw(page, '0.5');
    await page.waitForSelector('#approve:not([hidden])');
    await clearNotice(page);
    await page.click('#ap-key');
    const noUv = await page.waitForSelector('#notice > div.refused', { timeout: 20000 }).then((e) => e.innerText());
    log('no user verification (Sigil):', noUv.replace(/\s+/g, ' ').slice(0, 300));
    assert.match(noUv, /by Sigil/);
    await page.unroute('**/api/approval/begin');
    await shot(page, 'refused-no-user-verification');
    await cdp.send('WebAuthn.setUserVerified', { authenticatorId, isUserVerified: true });

    // 9. Staff approval. Above 5 BTC the withdrawal is held for one of
    //    alice and bob: the page says so and follows the request; the staff
    //    view lists it and shows what alice's key signs before it is
    //    touched; her approval issues the approval, which the engine
    //    verifies (its own checks, the user's key, alice's key against the
    //    published staff keys with verify_quorum) and redeems.
    const rid1 = await heldWithdrawal('6');
    await shot(page, 'withdrawal-held-for-staff');
    await approveInStaffView(rid1, 'approve', async () => {
      assert.equal(await staffPage.locator('#sd-intent td[data-field="amount"]').innerText(), '6 BTC');
      assert.equal(await staffPage.locator('#sd-intent td[data-field="approvals"]').innerText(), '0 of 1');
      await shot(staffPage, 'staff-view-approve-what-the-key-signs');
      await staffPage.locator('#staff').screenshot({ path: join(ART, 'staff-view.png') });
    });
    await noticeReason(page, 'DONE', 'the held withdrawal, once alice approved');
    await waitFor(page, `#held tr[data-request="${rid1}"][data-state="EXECUTED"]`, 'the held withdrawal, executed');
    const staffResult = JSON.parse(await page.locator('#result-json').innerText());
    assert.ok(staffResult.redeemed && staffResult.redeemed.redeemed_at > 0, 'the engine redeemed it');
    assert.equal(staffResult.verified.intent.amount, '6');
    assert.deepEqual(staffResult.verified.quorum.approvers, ['alice'], 'verify_quorum: alice approved');
    assert.equal(staffResult.verified.quorum.ok, true);
    assert.ok(staffResult.verified.amr.includes('mca'), 'amr says staff approved it');
    assert.equal(staffResult.verified.webauthn_evidence.ok, true, "the user's own signature re-verified too");
    assert.equal(staffResult.approval.decoded.claims.approvers[0].staff_id, 'alice');
    await shot(page, 'held-withdrawal-approved-and-redeemed');
    await staffPage.click('#staff-refresh');
    await staffPage.waitForSelector(`#staff-pending tr[data-request="${rid1}"][data-state="ISSUED"]`);

    // 10. Staff cancellation: another held withdrawal, cancelled in the
    //     staff view with alice's key; the user's page shows it cancelled.
    const rid2 = await heldWithdrawal('7');
    await approveInStaffView(rid2, 'cancel');
    await staffPage.bringToFront();
    await staffPage.waitForSelector(`#staff-pending tr[data-request="${rid2}"][data-state="CANCELLED"]`);
    await shot(staffPage, 'staff-view-cancelled');
    await page.bringToFront();
    await page.waitForSelector(`#held tr[data-request="${rid2}"][data-state="CANCELLED"]`);
    const cancelled = await noticeReason(page, 'CANCELLED', 'the held withdrawal cancelled by staff');
    assert.match(cancelled, /cancelled by staff:alice/);
    await shot(page, 'held-withdrawal-cancelled-by-staff');

    // 11. A delay: above 100 BTC the approval, once alice approved, is
    //     valid only 10 minutes later and the user may cancel it until then
    //     with their own key (an approval of cancel_approval)...
    const rid3 = await heldWithdrawal('150');
    await approveInStaffView(rid3, 'approve');
    await page.waitForSelector(`#held tr[data-request="${rid3}"][data-state="DELAYED"] button`);
    assert.match(await page.locator(`#held tr[data-request="${rid3}"] td[data-field="status"]`).innerText(), /valid from/);
    await clearNotice(page);
    await page.locator(`#held tr[data-request="${rid3}"] button`).click();
    await page.waitForSelector('#approve:not([hidden])');
    assert.equal(await page.locator('#ap-intent td[data-field="request"]').innerText(), rid3);
    await page.click('#ap-key');
    await noticeReason(page, 'DONE', 'the user cancels the delayed approval');
    await page.waitForSelector(`#held tr[data-request="${rid3}"][data-state="CANCELLED"]`);
    //     ... and one not cancelled (above 50 BTC: DELAY seconds) is
    //     executed once valid: the engine checks it against a signed
    //     cancellation list issued after its nbf.
    const rid4 = await heldWithdrawal('60');
    await approveInStaffView(rid4, 'approve');
    await page.waitForSelector(`#held tr[data-request="${rid4}"][data-state="DELAYED"]`);
    await shot(page, 'held-withdrawal-delayed');
    //     (Its delay runs out while the next steps, on other pages, run;
    //     step 15 checks what the engine did.)

    // 12. Refused: an authenticator of another model. A second sigild (and
    //    demo) whose allow-list names only Chromium's CTAP2 model, under an
    //    attestation root made for this run; a U2F authenticator (all-zero
    //    AAGUID, fido-u2f attestation) is refused at registration.
    const [allowSigilPort, allowDemoPort] = [await freePort(), await freePort()];
    const allowOrigin = `http://localhost:${allowDemoPort}`;
    const allowDir = join(dir, 'allow-list');
    mkdirSync(allowDir);
    const allowUrl = await startSigild('sigild-allow-list', allowDir, allowSigilPort, allowOrigin, [
      `aaguid_allow_list = ["${CHROMIUM_AAGUID}"]`,
      `attestation_ca_pem = ["${throwawayAttestationRoot(allowDir)}"]`,
    ]);
    await start('demo-allow-list', join(BIN, 'examples/demo'), ['--listen', `127.0.0.1:${allowDemoPort}`],
      { SIGIL_URL: allowUrl, SIGIL_CERTS: CERTS }, /demo exchange on/);
    const second = await context.newPage();
    await virtualAuthenticator(context, second, { protocol: 'u2f', hasResidentKey: false, hasUserVerification: false });
    await signIn(second, allowOrigin, `bob-${Date.now()}`);
    await second.fill('#key-name', 'other model');
    await second.click('#enroll-key');
    const model = await second.waitForSelector('#notice > div.refused', { timeout: 20000 }).then((e) => e.innerText());
    log('another authenticator model:', model.replace(/\s+/g, ' ').slice(0, 300));
    assert.match(model, /by Sigil: AUTHENTICATOR_NOT_ALLOWED — /);
    await shot(second, 'refused-aaguid-not-allowed');
    await second.close();

    // 13. The backend refuses oversized or malformed JSON with a 400 and
    //     sends nothing to Sigil.
    const bad = await page.evaluate(async () => {
      const post = async (body, type = 'application/json') => {
        const r = await fetch('/api/approval/begin', { method: 'POST', headers: { 'Content-Type': type }, body });
        return { status: r.status, reason: (await r.json()).error.reason };
      };
      return [
        await post(JSON.stringify({ action: 'withdrawal', user: 'x'.repeat(70 * 1024) })),
        await post('{"action":"withdrawal",'),
        await post(JSON.stringify({ action: 'withdrawal', user: 'a', asset: 'BTC', network: 'bitcoin', amount: '1', destination: 'x', fee: '0' })),
        await post('{}', 'text/plain'),
      ];
    });
    log('bad requests:', JSON.stringify(bad));
    assert.deepEqual(bad, [
      { status: 400, reason: 'TOO_LARGE' }, { status: 400, reason: 'MALFORMED_JSON' },
      { status: 400, reason: 'MALFORMED_JSON' }, { status: 400, reason: 'NOT_JSON' },
    ]);

    // 14. Refused by Sigil: a page on an origin its config does not list.
    const other = await context.newPage();
    await virtualAuthenticator(context, other);
    await signIn(other, `http://localhost:${badPort}`, `mallory-${Date.now()}`);
    await other.fill('#key-name', 'key on another origin');
    await other.click('#enroll-key');
    const wrongOrigin = await other.waitForSelector('#notice > div.refused', { timeout: 20000 }).then((e) => e.innerText());
    log('origin not listed:', wrongOrigin.replace(/\s+/g, ' ').slice(0, 300));
    assert.match(wrongOrigin, /by Sigil/);
    await shot(other, 'refused-origin-not-listed');
    await other.close();

    // 15. The delayed withdrawal of step 11 was executed once valid: the
    //     engine checked it against a signed cancellation list issued at
    //     or after its nbf, which names the one the user cancelled.
    await page.bringToFront();
    await waitFor(page, `#held tr[data-request="${rid4}"][data-state="EXECUTED"]`, 'the delayed withdrawal, executed once valid', (DELAY + 15) * 1000);
    const delayed = JSON.parse(await page.locator('#result-json').innerText());
    log('delayed withdrawal:', JSON.stringify({ nbf: delayed.verified.nbf, cancellations: delayed.verified.cancellations, quorum: delayed.verified.quorum.approvers, redeemed_at: delayed.redeemed.redeemed_at }));
    assert.equal(delayed.verified.intent.amount, '60');
    assert.ok(delayed.verified.nbf > 0, 'a delayed approval');
    assert.ok(delayed.verified.cancellations && delayed.verified.cancellations.issued_at >= delayed.verified.nbf, 'checked against a list issued after its nbf');
    assert.ok(delayed.verified.cancellations.cancelled >= 1, 'the list names the cancelled one');
    assert.deepEqual(delayed.verified.quorum.approvers, ['alice']);
    assert.ok(delayed.redeemed.redeemed_at >= delayed.verified.nbf);
    await shot(page, 'delayed-withdrawal-redeemed');
    await staffPage.bringToFront();
    await staffPage.click('#staff-refresh');
    await staffPage.waitForSelector(`#staff-pending tr[data-request="${rid4}"][data-state="ISSUED"]`);
    await shot(staffPage, 'staff-view');
    await staffPage.close();

    log(`all steps passed in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true, maxRetries: 5 });
    await stopAll();
    rmSync(dir, { recursive: true, force: true, maxRetries: 5 });
  }
}

main().then(() => process.exit(0), (e) => { console.error('e2e FAILED:', e.message); cleanup(); process.exit(1); });
