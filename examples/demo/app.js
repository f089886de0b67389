// Demo exchange page: plain JavaScript, no build step. Talks JSON to the
// demo backend (/api/*), which relays to Sigil.
'use strict';

const $ = (id) => document.getElementById(id);
let user = '';
let clockSkew = 0;          // the backend's now - local now, seconds
let addresses = [];
let approval = null;        // the open approval dialog
let lastComplete = null;    // the last /api/approval/complete body sent

// ---- base64url <-> bytes
function b64uToBuf(s) {
  s = s.replace(/-/g, '+').replace(/_/g, '/');
  while (s.length % 4) s += '=';
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out.buffer;
}
function bufToB64u(buf) {
  const b = new Uint8Array(buf);
  let s = '';
  for (let i = 0; i < b.length; i++) s += String.fromCharCode(b[i]);
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

// ---- WebAuthn JSON (as Sigil sends and expects it)
function creationOptions(o) {
  const pk = Object.assign({}, o.publicKey);
  pk.challenge = b64uToBuf(pk.challenge);
  pk.user = Object.assign({}, pk.user, { id: b64uToBuf(pk.user.id) });
  if (pk.excludeCredentials) pk.excludeCredentials = pk.excludeCredentials.map((c) => Object.assign({}, c, { id: b64uToBuf(c.id) }));
  return { publicKey: pk };
}
function requestOptions(o) {
  const pk = Object.assign({}, o.publicKey);
  pk.challenge = b64uToBuf(pk.challenge);
  if (pk.allowCredentials) pk.allowCredentials = pk.allowCredentials.map((c) => Object.assign({}, c, { id: b64uToBuf(c.id) }));
  return { publicKey: pk };
}
function registrationJSON(c) {
  return {
    id: c.id, rawId: bufToB64u(c.rawId), type: c.type,
    response: {
      attestationObject: bufToB64u(c.response.attestationObject),
      clientDataJSON: bufToB64u(c.response.clientDataJSON),
      transports: c.response.getTransports ? c.response.getTransports() : undefined,
    },
    extensions: c.getClientExtensionResults(),
  };
}
function assertionJSON(c) {
  return {
    id: c.id, rawId: bufToB64u(c.rawId), type: c.type,
    response: {
      authenticatorData: bufToB64u(c.response.authenticatorData),
      clientDataJSON: bufToB64u(c.response.clientDataJSON),
      signature: bufToB64u(c.response.signature),
      userHandle: c.response.userHandle ? bufToB64u(c.response.userHandle) : null,
    },
    extensions: c.getClientExtensionResults(),
  };
}

// ---- talking to the backend
async function api(path, body) {
  const r = await fetch(path, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
  let data;
  try { data = await r.json(); } catch (e) { data = { error: { source: 'demo', reason: 'HTTP_' + r.status, message: 'unreadable answer' } }; }
  if (!r.ok || data.error) throw Object.assign(new Error('refused'), { refusal: data.error || {}, status: r.status });
  return data;
}

function when(unix) { return new Date(unix * 1000).toLocaleTimeString(); }
function nowSecs() { return Math.floor(Date.now() / 1000 + clockSkew); }

function esc(s) { const d = document.createElement('div'); d.textContent = s == null ? '' : String(s); return d.innerHTML; }

function notice(kind, html, reason) {
  const n = $('notice');
  n.innerHTML = '<div class="' + kind + '"' + (reason ? ' data-reason="' + esc(reason) + '"' : '') + '>' + html + '</div>';
}

// A refusal as a person needs it: who refused, the reason name, the
// message, and when to retry where there is such a time.
function showRefusal(e, what) {
  const r = e.refusal || { source: 'page', reason: 'ERROR', message: String(e.message || e) };
  const who = { sigil: 'Sigil', verifier: "the engine's verifier", demo: 'this demo backend', page: 'your browser' }[r.source] || r.source;
  let html = '<b>' + esc(what) + ' refused</b> by ' + esc(who) + ': <b class="reason">' + esc(r.reason) + '</b> — ' + esc(r.message);
  if (r.retry_at) {
    html += '<br>Retry at <b>' + esc(when(r.retry_at)) + '</b> (in <span class="retry-in" data-at="' + r.retry_at + '">' + Math.max(0, r.retry_at - nowSecs()) + '</span> s).';
  }
  if (r.fields && r.fields.length) html += '<br>' + r.fields.map((f) => esc(f.field) + ': ' + esc(f.description)).join('<br>');
  if (r.sigil) html += '<br>Sigil, asked to redeem it for that record, refused too: <b class="reason">' + esc(r.sigil.reason) + '</b> — ' + esc(r.sigil.message);
  notice('refused', html, r.reason);
  if (r.approval) showResult({ approval: r.approval }, 'Approval issued but not executed');
}

function showResult(data, title) {
  $('result').hidden = false;
  $('result-summary').innerHTML = '<p><b>' + esc(title) + '</b></p>';
  $('result-json').textContent = JSON.stringify({ approval: data.approval, verified: data.verified, redeemed: data.redeemed }, null, 2);
}

// ---- account state
async function refresh() {
  const s = await api('/api/state', { user });
  // Never ahead of the backend's clock: a hold shows as over only once it is.
  clockSkew = s.now - Date.now() / 1000;
  const tb = $('factors').querySelector('tbody');
  tb.innerHTML = '';
  for (const f of s.factors) {
    const tr = document.createElement('tr');
    tr.innerHTML = '<td>' + esc(f.kind) + '</td><td>' + esc(f.nickname) + '</td><td>' + esc(f.state) + (f.suspected_cloned ? ' (suspected cloned)' : '') +
      '</td><td class="mono">' + esc(f.aaguid) + '</td><td>' + (f.last_used_at ? esc(when(f.last_used_at)) : '—') + '</td><td><button class="link">remove</button></td>';
    tr.querySelector('button').onclick = () => guard('Removing the factor', async () => handle(await api('/api/approval/begin', { action: 'remove_factor', user, factor_id: f.factor_id })));
    tb.appendChild(tr);
  }
  addresses = s.addresses;
  renderAddresses();
}

function renderAddresses() {
  const tb = $('addresses').querySelector('tbody');
  tb.innerHTML = '';
  const sel = $('wd-address');
  const keep = sel.value;
  sel.innerHTML = '';
  for (const a of addresses) {
    const left = a.usable_at - nowSecs();
    const tr = document.createElement('tr');
    tr.innerHTML = '<td>' + esc(a.asset) + '</td><td>' + esc(a.network) + '</td><td class="mono">' + esc(a.address) + '</td><td>' + esc(a.label) + '</td><td>' +
      (left > 0 ? '<span class="hold">on hold, ' + left + ' s left</span>' : '<span class="usable">usable</span>') + '</td>';
    tb.appendChild(tr);
    const o = document.createElement('option');
    o.value = JSON.stringify([a.asset, a.network, a.address]);
    o.textContent = a.asset + ' to ' + a.address + (a.label ? ' (' + a.label + ')' : '');
    sel.appendChild(o);
  }
  if (keep) sel.value = keep;
}

setInterval(() => {
  if (addresses.length) renderAddresses();
  for (const s of document.querySelectorAll('.retry-in')) s.textContent = Math.max(0, Number(s.dataset.at) - nowSecs());
}, 1000);

async function guard(what, f) {
  try { await f(); } catch (e) { showRefusal(e, what); }
  try { if (user) await refresh(); } catch (e) { /* the refusal above says enough */ }
}

// ---- what the backend asks the page to do next
async function handle(r) {
  if (r.next === 'approve') return openApproval(r);
  if (r.next === 'webauthn_create') return createCredential(r);
  if (r.next === 'totp_confirm') return showTotp(r);
  if (r.next === 'done') {
    notice('ok', '<b>Done:</b> ' + esc(r.done) + (r.usable_at ? ' — usable from ' + esc(when(r.usable_at)) : ''), 'DONE');
    if (r.approval) showResult(r, r.done);
  }
}

async function createCredential(r) {
  let cred;
  try {
    cred = await navigator.credentials.create(creationOptions(r.options));
  } catch (e) {
    throw Object.assign(new Error('browser'), { refusal: { source: 'page', reason: e.name || 'WEBAUTHN_ERROR', message: e.message } });
  }
  const f = await api('/api/webauthn/register/finish', { user, ceremony_id: r.ceremony_id, credential: registrationJSON(cred) });
  notice('ok', '<b>Security key added:</b> ' + esc(f.factor.nickname) + ' (model ' + esc(f.factor.aaguid || 'not reported') + '). Withdrawals are locked for a while after a security change.', 'ENROLLED');
}

let totpFactor = null;
function showTotp(r) {
  totpFactor = r.factor_id;
  $('totp-enroll').hidden = false;
  $('totp-qr').innerHTML = r.qr_svg;   // SVG made server-side by Sigil
  $('totp-secret').textContent = r.secret_base32;
  notice('ok', 'Scan the QR code and confirm with the first code.', 'TOTP_PENDING');
}

// ---- approvals
const ACTIONS = {
  withdrawal: 'a withdrawal', add_address: 'adding a withdrawal address', change_anti_phishing_code: 'a new anti-phishing code',
  remove_factor: 'removing a second factor', enroll_factor: 'adding a second factor',
};
function openApproval(r) {
  approval = r;
  const i = r.intent;
  $('result').hidden = true;
  $('approve').hidden = false;
  $('ap-action').textContent = ACTIONS[i.action] || i.action;
  const rows = [];
  if (i.action === 'withdrawal') {
    rows.push(['amount', i.amount + ' ' + i.asset], ['network', i.network], ['to', i.destination], ['withdrawal id', i.withdrawal_id]);
  } else if (i.action === 'add_address') {
    rows.push(['address', i.destination], ['asset', i.asset + ' on ' + i.network], ['label', i.memo]);
  } else {
    rows.push(['detail', i.memo]);
  }
  if (i.memo && i.action === 'withdrawal') rows.push(['memo', i.memo]);
  $('ap-intent').innerHTML = rows.map(([k, v]) => '<tr><td>' + esc(k) + '</td><td class="mono" data-field="' + esc(k) + '">' + esc(v) + '</td></tr>').join('');
  $('ap-digest').textContent = r.intent_sha256;
  $('ap-code').textContent = r.anti_phishing_code || '(none set)';
  $('ap-expires').textContent = when(r.expires_at);
  $('ap-key').disabled = !r.webauthn;
  $('ap-totp-btn').disabled = !r.allowed_kinds.includes('TOTP') || !r.factors.some((f) => f.kind === 'TOTP');
  $('approve').scrollIntoView();
}

async function complete(body) {
  lastComplete = body;
  let r;
  try {
    r = await api('/api/approval/complete', body);
  } catch (e) {
    // A wrong proof may be tried again; any other answer used the challenge up.
    const reason = (e.refusal || {}).reason;
    if (reason !== 'FACTOR_REJECTED' && (e.refusal || {}).source !== 'page') { $('approve').hidden = true; approval = null; }
    throw e;
  }
  if (r.next === 'done') { $('approve').hidden = true; approval = null; }
  await handle(r);
  if (r.verified) showResult(r, 'Withdrawal ' + r.verified.intent.withdrawal_id + ': approved by your key, verified by the engine with sigil-verify, redeemed once');
  return r;
}

function completeBody(proof) {
  const body = { user, challenge_id: approval.challenge_id, proof };
  if (approval.intent.action === 'withdrawal') {
    const i = approval.intent;
    body.withdrawal = { withdrawal_id: i.withdrawal_id, asset: i.asset, network: i.network, amount: i.amount, destination: i.destination, memo: i.memo };
  }
  return body;
}

async function approveWithKey() {
  let cred;
  try {
    cred = await navigator.credentials.get(requestOptions(approval.webauthn));
  } catch (e) {
    throw Object.assign(new Error('browser'), { refusal: { source: 'page', reason: e.name || 'WEBAUTHN_ERROR', message: e.message } });
  }
  await complete(completeBody({ webauthn: assertionJSON(cred) }));
}

// For the end-to-end test and the curious: resend a captured request.
window.sigilDemo = {
  lastComplete: () => lastComplete,
  resend: (body) => guard('Resending the same approval', () => complete(body)),
};

// ---- wiring
function signIn(name) {
  user = name.trim();
  if (!user) return;
  $('signin').hidden = true;
  $('account').hidden = false;
  $('whoami').textContent = user;
  guard('Loading the account', async () => {});
}

window.addEventListener('DOMContentLoaded', () => {
  $('signin-form').onsubmit = (ev) => { ev.preventDefault(); signIn($('user').value); };
  $('signout').onclick = () => location.reload();
  $('enroll-key').onclick = () => guard('Adding the security key', async () => handle(await api('/api/webauthn/register/begin', { user, nickname: $('key-name').value || 'security key' })));
  $('enroll-totp').onclick = () => guard('Adding the authenticator app', async () => handle(await api('/api/totp/begin', { user, nickname: $('totp-name').value || 'phone' })));
  $('totp-confirm').onclick = () => guard('Confirming the authenticator app', async () => {
    await api('/api/totp/confirm', { user, factor_id: totpFactor, code: $('totp-confirm-code').value });
    $('totp-enroll').hidden = true;
    notice('ok', '<b>Authenticator app active.</b>', 'ENROLLED');
  });
  $('set-apc').onclick = () => guard('Setting the anti-phishing code', async () => handle(await api('/api/approval/begin', { action: 'change_anti_phishing_code', user, code: $('apc').value })));
  $('add-address').onclick = () => guard('Adding the address', async () => {
    const [asset, network] = $('addr-asset').value.split('|');
    await handle(await api('/api/approval/begin', { action: 'add_address', user, asset, network, address: $('addr-address').value, label: $('addr-label').value }));
  });
  $('withdraw').onclick = () => guard('The withdrawal', async () => {
    if (!$('wd-address').value) throw Object.assign(new Error('page'), { refusal: { source: 'page', reason: 'NO_ADDRESS', message: 'add a withdrawal address first' } });
    const [asset, network, destination] = JSON.parse($('wd-address').value);
    await handle(await api('/api/approval/begin', { action: 'withdrawal', user, asset, network, amount: $('wd-amount').value, destination }));
  });
  $('ap-key').onclick = () => guard('The approval', approveWithKey);
  $('ap-totp-btn').onclick = () => guard('The approval', async () => {
    const totp = approval.factors.find((f) => f.kind === 'TOTP');
    await complete(completeBody({ totp: { code: $('ap-totp').value, factor_id: totp ? totp.factor_id : '' } }));
  });
  $('ap-cancel').onclick = () => { $('approve').hidden = true; approval = null; };
});
