// Demo exchange page: plain JavaScript, no build step. Talks JSON to the
// demo backend (/api/*), which relays to Sigil.
'use strict';

const $ = (id) => document.getElementById(id);
let user = '';
let clockSkew = 0;          // the backend's now - local now, seconds
let addresses = [];
let approval = null;        // the open approval dialog
let lastComplete = null;    // the last /api/approval/complete body sent
// The user's withdrawals held by policy, by request id: the withdrawal
// record the engine is to execute (as the page keeps it), the request as
// Sigil last described it, and where the page is with it.
const held = new Map();
let staffDecision = null;   // the open staff decision (staff view)

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

// A time of today as the time alone, any other with its date.
function when(unix) {
  const d = new Date(unix * 1000);
  return d.toDateString() === new Date().toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
}
function nowSecs() { return Math.floor(Date.now() / 1000 + clockSkew); }

function esc(s) { const d = document.createElement('div'); d.textContent = s == null ? '' : String(s); return d.innerHTML; }

function notice(kind, html, reason, target) {
  const n = $(target || 'notice');
  n.innerHTML = '<div class="' + kind + '"' + (reason ? ' data-reason="' + esc(reason) + '"' : '') + '>' + html + '</div>';
}

// A refusal as a person needs it: who refused, the reason name, the
// message, and when to retry where there is such a time.
function showRefusal(e, what, target) {
  const r = e.refusal || { source: 'page', reason: 'ERROR', message: String(e.message || e) };
  const who = { sigil: 'Sigil', verifier: "the engine's verifier", demo: 'this demo backend', page: 'your browser' }[r.source] || r.source;
  let html = '<b>' + esc(what) + ' refused</b> by ' + esc(who) + ': <b class="reason">' + esc(r.reason) + '</b> — ' + esc(r.message);
  if (r.retry_at) {
    html += '<br>Retry at <b>' + esc(when(r.retry_at)) + '</b> (in <span class="retry-in" data-at="' + r.retry_at + '">' + Math.max(0, r.retry_at - nowSecs()) + '</span> s).';
  }
  if (r.fields && r.fields.length) html += '<br>' + r.fields.map((f) => esc(f.field) + ': ' + esc(f.description)).join('<br>');
  if (r.sigil) html += '<br>Sigil, asked to redeem it for that record, refused too: <b class="reason">' + esc(r.sigil.reason) + '</b> — ' + esc(r.sigil.message);
  notice('refused', html, r.reason, target);
  if (r.approval && !target) showResult({ approval: r.approval }, 'Approval issued but not executed');
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
  if (r.next === 'held') return trackHeld(r);
  if (r.next === 'done') {
    if (r.pending) updateHeld(r.pending);
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
  cancel_approval: 'cancelling a held withdrawal',
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
  } else if (i.action === 'cancel_approval') {
    rows.push(['request', i.memo]);
    const h = held.get(i.memo);
    if (h) rows.push(['withdrawal', h.record.amount + ' ' + h.record.asset + ' to ' + h.record.destination]);
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
  if (r.next === 'done' || r.next === 'held') { $('approve').hidden = true; approval = null; }
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

// ---- withdrawals held by policy (staff quorum, delay)
const FINAL = ['CANCELLED', 'EXPIRED', 'ACTIVATED'];

function approvalsText(p) {
  if (!p.required) return '';
  const who = [].concat(...p.quorum.map((q) => q.approved_by));
  return p.approved + ' of ' + p.required + (who.length ? ': ' + who.join(', ') : '');
}

function trackHeld(r) {
  const p = r.pending;
  const w = lastComplete && lastComplete.withdrawal;
  held.set(p.request_id, { record: w, pending: p, status: 'waiting', result: null });
  clockSkew = r.now - Date.now() / 1000;
  const why = p.state === 'AWAITING_QUORUM'
    ? 'waiting for staff approval (' + approvalsText(p) + ')'
    : 'approved; valid from ' + when(p.not_before);
  notice('ok', '<b>Withdrawal held by policy:</b> ' + esc(p.intent.amount + ' ' + p.intent.asset) + ' to <span class="mono">' + esc(p.intent.destination) +
    '</span> — ' + esc(why) + '. It is executed once the approval is issued; you may cancel it until then.', 'HELD');
  renderHeld();
}

// A request only moves forward: an answer that was under way while a
// newer one arrived (a poll racing a cancellation) is dropped.
const STAGE = { AWAITING_QUORUM: 0, DELAYED: 1, ISSUED: 2, CANCELLED: 3, EXPIRED: 3, ACTIVATED: 3 };

function updateHeld(p) {
  const h = held.get(p.request_id);
  if (!h) return;
  const was = h.pending.state;
  if ((STAGE[p.state] || 0) < (STAGE[was] || 0)) return;
  h.pending = p;
  if (p.state === 'CANCELLED' && was !== 'CANCELLED') {
    h.status = 'cancelled';
    notice('refused', '<b>Withdrawal cancelled:</b> ' + esc(p.intent.amount + ' ' + p.intent.asset) + ' (request <span class="mono">' + esc(p.request_id) +
      '</span>) was cancelled by ' + esc(p.closed_by) + '; nothing will be sent.', 'CANCELLED');
  } else if (p.state === 'EXPIRED' && was !== 'EXPIRED') {
    h.status = 'expired';
    notice('refused', '<b>Withdrawal expired:</b> request <span class="mono">' + esc(p.request_id) + '</span> waited for its staff approvals too long.', 'EXPIRED');
  }
}

// The status of a held withdrawal, as HTML.
function heldStatus(h) {
  const p = h.pending;
  if (h.status === 'executed') return 'approved, verified and redeemed';
  if (h.status === 'executing') return 'approved; the engine is verifying it';
  if (h.status === 'failed') return 'approved, but the engine refused it (see above)';
  switch (p.state) {
    case 'AWAITING_QUORUM': return esc('waiting for staff approval (' + approvalsText(p) + '), until ' + when(p.expires_at));
    case 'DELAYED': return esc((p.required ? 'approved by staff (' + approvalsText(p) + '); ' : 'approved; ') + 'valid from ' + when(p.not_before)) +
      ' (in <span class="retry-in" data-at="' + esc(p.not_before) + '"></span> s)';
    case 'ISSUED': return h.retryAt ? esc('approved; the engine waits for a signed cancellation list dated after its nbf, until ' + when(h.retryAt)) : 'approved';
    case 'CANCELLED': return esc('cancelled by ' + p.closed_by);
    case 'EXPIRED': return 'expired';
    default: return esc(p.state.toLowerCase());
  }
}

// Replaces the rows of `table` only when they changed (so that a button
// is not swapped under the pointer), then wires the buttons: `wire(tr)`
// for each row.
const shownRows = {};
function setRows(table, rows, wire) {
  const tb = $(table).querySelector('tbody');
  const html = rows.join('');
  if (shownRows[table] === html) return;
  shownRows[table] = html;
  tb.innerHTML = html;
  for (const tr of tb.querySelectorAll('tr')) wire(tr);
}

function renderHeld() {
  $('held-box').hidden = held.size === 0;
  const rows = [];
  for (const [id, h] of [...held.entries()].reverse()) {
    const p = h.pending;
    const i = p.intent;
    const cancellable = (p.state === 'AWAITING_QUORUM' || p.state === 'DELAYED') && h.status === 'waiting';
    rows.push('<tr data-request="' + esc(id) + '" data-state="' + esc(h.status === 'executed' ? 'EXECUTED' : p.state) + '"><td class="mono">' + esc(id) + '</td><td>' +
      esc(i.amount + ' ' + i.asset) + ' to <span class="mono">' + esc(i.destination) + '</span></td><td data-field="status">' + heldStatus(h) + '</td><td>' +
      (cancellable ? '<button class="link">cancel with my factor</button>' : '') + '</td></tr>');
  }
  setRows('held', rows, (tr) => {
    const b = tr.querySelector('button');
    const id = tr.dataset.request;
    if (b) b.onclick = () => guard('Cancelling the withdrawal', async () => handle(await api('/api/approval/begin', { action: 'cancel_approval', user, request_id: id })));
  });
  for (const c of $('held').querySelectorAll('.retry-in')) c.textContent = Math.max(0, Number(c.dataset.at) - nowSecs());
}

let polling = false;
async function pollHeld() {
  if (polling || !user) return;
  polling = true;
  try {
    for (const [id, h] of held) {
      if (h.status !== 'waiting' || FINAL.includes(h.pending.state)) continue;
      try {
        const r = await api('/api/approval/pending/' + encodeURIComponent(id), { user });
        clockSkew = r.now - Date.now() / 1000;
        updateHeld(r.pending);
      } catch (e) { continue; }
      // Issued and past its nbf: the engine verifies and redeems it.
      if (h.pending.state === 'ISSUED' && h.status === 'waiting' && !(h.retryAt && nowSecs() < h.retryAt)) {
        h.status = 'executing';
        renderHeld();
        try {
          const r = await api('/api/approval/execute', { user, request_id: id, withdrawal: h.record });
          h.status = 'executed';
          await handle(r);
          showResult(r, 'Withdrawal ' + r.verified.intent.withdrawal_id + ': approved by your key and by staff (' + (r.verified.quorum ? r.verified.quorum.approvers.join(', ') : 'none') +
            '), verified by the engine with sigil-verify' + (r.verified.cancellations ? ' (not on the signed cancellation list)' : '') + ', redeemed once');
        } catch (e) {
          const r = e.refusal || {};
          if (r.reason === 'CANCELLATION_LIST_PENDING' && r.retry_at) {
            // Not yet verifiable offline: again once a list covers its nbf.
            h.status = 'waiting';
            h.retryAt = r.retry_at;
          } else {
            h.status = 'failed';
            showRefusal(e, 'Executing the held withdrawal');
          }
        }
      }
    }
  } finally {
    polling = false;
    renderHeld();
  }
}
setInterval(pollHeld, 1000);

// ---- staff view (development only: a typed staff id, no sign-in)
function staffId() { return $('staff-id').value.trim(); }

async function staffGuard(what, f) {
  try { await f(); } catch (e) { showRefusal(e, what, 'staff-notice'); }
  try { await refreshStaff(); } catch (e) { /* the refusal above says enough */ }
}

function withdrawalText(i) {
  if (i.action === 'withdrawal') return i.amount + ' ' + i.asset + ' on ' + i.network + ' to ' + i.destination;
  return i.action + (i.memo ? ': ' + i.memo : '');
}

let staffRefreshing = null;  // the refresh under way
let staffAgain = false;      // another one asked for meanwhile
async function refreshStaff() {
  if (staffRefreshing) { staffAgain = true; return staffRefreshing; }
  staffRefreshing = (async () => {
    do {
      staffAgain = false;
      const [m, l] = await Promise.all([api('/api/staff/members', {}), api('/api/staff/pending', { include_closed: $('staff-closed').checked })]);
      clockSkew = l.now - Date.now() / 1000;
      setRows('staff-members', m.staff.map((s) => {
        const live = s.keys.filter((k) => !k.removed_at);
        return '<tr data-staff="' + esc(s.staff_id) + '"><td>' + esc(s.staff_id) + (s.removed_at ? ' (removed)' : '') + '</td><td>' + esc(s.role) + '</td><td data-field="keys">' +
          esc(live.length) + '</td><td>' + (live.length ? esc(live.map(keyCounts).join(', ')) : '—') + '</td></tr>';
      }), () => {});
      setRows('staff-pending', l.requests.map((p) => {
        const until = p.state === 'AWAITING_QUORUM' ? 'quorum by ' + when(p.expires_at)
          : p.state === 'DELAYED' ? 'valid from ' + when(p.not_before)
            : p.state === 'ISSUED' && p.approval_expires_at ? 'approval valid until ' + when(p.approval_expires_at)
              : p.closed_by ? 'closed by ' + p.closed_by : '';
        const canApprove = p.state === 'AWAITING_QUORUM';
        const canCancel = p.state === 'AWAITING_QUORUM' || p.state === 'DELAYED';
        return '<tr data-request="' + esc(p.request_id) + '" data-state="' + esc(p.state) + '"><td class="mono">' + esc(p.request_id) + '</td><td>' + esc(p.user_id || '(policy change)') +
          '</td><td class="mono">' + esc(withdrawalText(p.intent)) + '</td><td data-field="approvals">' + esc(approvalsText(p) || '—') + '</td><td data-field="state">' +
          esc(p.state.toLowerCase().replace(/_/g, ' ')) + '</td><td>' + esc(until) + '</td><td>' +
          (canApprove ? '<button class="approve">approve</button> ' : '') + (canCancel ? '<button class="cancel">cancel</button>' : '') + '</td></tr>';
      }), (tr) => {
        const id = tr.dataset.request;
        const a = tr.querySelector('button.approve');
        const c = tr.querySelector('button.cancel');
        if (a) a.onclick = () => beginDecision(id, 'approve');
        if (c) c.onclick = () => beginDecision(id, 'cancel');
      });
    } while (staffAgain);
  })();
  try { await staffRefreshing; } finally { staffRefreshing = null; }
}

// Shows what the staff member's key is about to sign before it is touched.
function beginDecision(requestId, decision) {
  return staffGuard(decision === 'approve' ? 'Approving' : 'Cancelling', async () => {
    const staff = staffId();
    if (!staff) throw Object.assign(new Error('page'), { refusal: { source: 'page', reason: 'NO_STAFF_ID', message: 'type your staff id first' } });
    const r = await api('/api/staff/decide/begin', { request_id: requestId, staff_id: staff, decision });
    staffDecision = r;
    const p = r.request;
    const i = p.intent;
    $('sd-who').textContent = r.staff_id;
    $('sd-decision').textContent = (decision === 'approve' ? 'APPROVE' : 'CANCEL') + ' ' + (p.kind === 'withdrawal' ? 'this withdrawal' : p.kind);
    const rows = [['user', p.user_id || '(policy change)']];
    if (i.action === 'withdrawal') rows.push(['amount', i.amount + ' ' + i.asset], ['network', i.network], ['to', i.destination], ['withdrawal id', i.withdrawal_id]);
    else rows.push(['detail', i.memo]);
    rows.push(['request', p.request_id], ['approvals', approvalsText(p) || '—']);
    $('sd-intent').innerHTML = rows.map(([k, v]) => '<tr><td>' + esc(k) + '</td><td class="mono" data-field="' + esc(k) + '">' + esc(v) + '</td></tr>').join('');
    $('sd-digest').textContent = r.signs_sha256;
    $('sd-signs').textContent = r.signs.action === 'cancel_approval' ? 'the cancellation of request ' + r.signs.memo : 'exactly this ' + r.signs.action;
    $('sd-expires').textContent = when(r.expires_at);
    $('sd-key').textContent = decision === 'approve' ? 'Approve with my security key' : 'Cancel it with my security key';
    $('staff-sign').hidden = false;
    $('staff-sign').scrollIntoView();
  });
}

async function signDecision() {
  const d = staffDecision;
  if (!d) return;
  let cred;
  try {
    cred = await navigator.credentials.get(requestOptions(d.options));
  } catch (e) {
    throw Object.assign(new Error('browser'), { refusal: { source: 'page', reason: e.name || 'WEBAUTHN_ERROR', message: e.message } });
  }
  staffDecision = null;
  $('staff-sign').hidden = true;
  const r = await api('/api/staff/decide/complete', { request_id: d.request.request_id, staff_id: d.staff_id, ceremony_id: d.ceremony_id, response: assertionJSON(cred) });
  const p = r.pending;
  if (d.decision === 'approve') {
    const issued = p.state === 'AWAITING_QUORUM' ? 'still waiting (' + approvalsText(p) + ')' : p.state === 'DELAYED' ? 'quorum met; the approval is valid from ' + when(p.not_before) : 'quorum met; the approval is issued';
    notice('ok', '<b>Approved</b> request <span class="mono">' + esc(p.request_id) + '</span> as ' + esc(d.staff_id) + ': ' + esc(issued) + '.', 'STAFF_APPROVED', 'staff-notice');
  } else {
    notice('ok', '<b>Cancelled</b> request <span class="mono">' + esc(p.request_id) + '</span> as ' + esc(d.staff_id) + '.', 'STAFF_CANCELLED', 'staff-notice');
  }
}

// When a staff key counts for quorums.
function keyCounts(k) {
  if (k.suspected_cloned) return 'never (suspected cloned)';
  if (!k.usable_at) return 'once other staff approve it' + (k.request_id ? ' (request ' + k.request_id + ')' : '');
  return k.usable_at <= nowSecs() ? 'now' : when(k.usable_at);
}

async function registerStaffKey() {
  const staff = staffId();
  const r = await api('/api/staff/register/begin', { staff_id: staff });
  let cred;
  try {
    cred = await navigator.credentials.create(creationOptions(r.options));
  } catch (e) {
    throw Object.assign(new Error('browser'), { refusal: { source: 'page', reason: e.name || 'WEBAUTHN_ERROR', message: e.message } });
  }
  const f = await api('/api/staff/register/finish', { staff_id: staff, ceremony_id: r.ceremony_id, credential: registrationJSON(cred) });
  const key = f.staff.keys[f.staff.keys.length - 1];
  const from = !key.usable_at ? 'once other staff members approve it with their keys' + (key.request_id ? ' (request ' + key.request_id + ')' : '')
    : key.usable_at <= f.now ? 'at once (development hold of 0 s)' : 'from ' + when(key.usable_at) + ' (the hold after a key is registered)';
  notice('ok', '<b>Security key registered</b> for ' + esc(f.staff.staff_id) + '; it counts for quorums ' + esc(from) + '.', 'STAFF_KEY_ADDED', 'staff-notice');
}

function showTab(name) {
  const staff = name === 'staff';
  $('account-panel').hidden = staff;
  $('staff').hidden = !staff;
  $('tab-account').classList.toggle('active', !staff);
  $('tab-staff').classList.toggle('active', staff);
  if (staff) staffGuard('Loading the staff view', async () => {});
}

setInterval(() => { if (!$('staff').hidden) refreshStaff().catch(() => {}); }, 2000);

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
  $('tab-account').onclick = () => { history.replaceState(null, '', '#'); showTab('account'); };
  $('tab-staff').onclick = () => { history.replaceState(null, '', '#staff'); showTab('staff'); };
  $('staff-add').onclick = () => staffGuard('Adding the staff member', async () => {
    const r = await api('/api/staff/add', { staff_id: staffId(), role: $('staff-role').value });
    notice('ok', '<b>Staff member added:</b> ' + esc(r.staff.staff_id) + ' (' + esc(r.staff.role) + '). Register their security key next.', 'STAFF_ADDED', 'staff-notice');
  });
  $('staff-register').onclick = () => staffGuard('Registering the security key', registerStaffKey);
  $('staff-closed').onchange = () => staffGuard('Loading the requests', async () => {});
  $('staff-refresh').onclick = () => staffGuard('Loading the requests', async () => {});
  $('sd-key').onclick = () => staffGuard('The decision', signDecision);
  $('sd-dismiss').onclick = () => { $('staff-sign').hidden = true; staffDecision = null; };
  showTab(location.hash === '#staff' ? 'staff' : 'account');
});
