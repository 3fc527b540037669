// The payflow-edge dashboard: a page over the admin API. The token lives in this tab's
// sessionStorage and goes out only as the Authorization header of same-origin /api calls.
// Every value from the API reaches the page as text (textContent), never as markup.

const TOKEN_KEY = 'payflow-edge-token';
const views = ['login', 'events', 'event', 'plugins', 'endpoints', 'checker'];
const $ = (id) => document.getElementById(id);

/** Builds an element: el('td', { class: 'x' }, 'text', childNode, …). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c !== undefined && c !== null) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

const time = (ms) => (ms ? new Date(ms).toLocaleString() : '');
/** How long an upstream's earliest pending delivery has been due: '—' when none is, or unknown. */
const behind = (ms) => (ms ? `${(ms / 1000).toFixed(1)} s` : '—');
const fill = (tbody, rows) => tbody.replaceChildren(...rows);

class Unauthorized extends Error {}

/** Calls the admin API; JSON in and out. A 401 logs out. */
async function api(method, path, body, contentType = 'application/json') {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) ?? ''}` };
  if (body !== undefined) headers['Content-Type'] = contentType;
  const response = await fetch(path, { method, headers, body });
  if (response.status === 401) throw new Unauthorized('unauthorized');
  const text = await response.text();
  let json;
  try { json = JSON.parse(text); } catch { json = { error: text }; }
  if (!response.ok) {
    const message = json.message ? `: ${json.message}` : '';
    throw new Error(`${response.status} ${json.error ?? ''}${message}`);
  }
  return json;
}

// ---------------------------------------------------------------- session and routing

let session = null; // { merchant, operator, checker }

async function login(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    session = await api('GET', '/api/whoami');
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    session = null;
    throw e;
  }
}

function logout() {
  sessionStorage.removeItem(TOKEN_KEY);
  session = null;
  cursor = null;
  $('filter-endpoint').replaceChildren(el('option', { value: '' }, 'any'));
  location.hash = '#/login';
  route();
}

function show(view) {
  $('page-error').hidden = true;
  for (const v of views) $(`${v}-view`).hidden = v !== view;
  $('nav').hidden = $('logout').hidden = !session;
  $('who').textContent = session ? (session.operator ? 'operator' : `merchant ${session.merchant}`) : '';
  for (const a of document.querySelectorAll('#nav a')) {
    a.classList.toggle('active', a.dataset.view === view || (view === 'event' && a.dataset.view === 'events'));
  }
}

// A part of the location's hash, as typed or linked (a malformed escape is kept as typed).
function decodePart(part) {
  try { return decodeURIComponent(part); } catch { return part; }
}

async function route() {
  stopTimers();
  if (!session && sessionStorage.getItem(TOKEN_KEY)) {
    try { await login(sessionStorage.getItem(TOKEN_KEY)); } catch { /* back to the login form */ }
  }
  const [, view = 'events', ...args] = location.hash.split('/').map(decodePart);
  if (!session) return show('login');
  try {
    switch (view) {
      case 'event': return await showEvent(...args);
      case 'plugins': return await showPlugins();
      case 'endpoints': return await showEndpoints();
      case 'checker': return showChecker();
      default: return await showEvents();
    }
  } catch (e) {
    if (e instanceof Unauthorized) return logout();
    for (const v of views) $(`${v}-view`).hidden = true;
    $('page-error').hidden = false;
    $('page-error').textContent = view === 'event' && e.message.startsWith('404')
      ? `No event ${args[0] ?? ''} here: it does not exist, or it is not this token's to see.`
      : `The gateway did not answer as expected: ${e.message}`;
  }
}

let timers = [];
function every(ms, f) { timers.push(setInterval(() => f().catch(onTimerError), ms)); }
function stopTimers() { timers.forEach(clearInterval); timers = []; }
function onTimerError(e) { if (e instanceof Unauthorized) logout(); }

// ---------------------------------------------------------------- events

let cursor = null; // the page being shown: null is the newest
let nextCursor = null;

async function showEvents() {
  show('events');
  await loadEndpointFilter();
  await loadEvents();
  startChart();
  // The newest page follows new events as they arrive.
  every(2000, async () => { if (cursor === null) await loadEvents(); });
}

async function loadEndpointFilter() {
  const select = $('filter-endpoint');
  if (select.options.length > 1) return;
  const { endpoints } = await api('GET', '/api/endpoints');
  select.append(...endpoints.map((e) => el('option', { value: e.path }, e.path)));
}

let shownFilters = {}; // the filters of the list on screen (the form may have changed since)

function filterQuery(filters) {
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(filters)) if (v) query.set(k, v);
  return query;
}

async function loadEvents() {
  const filters = { status: $('filter-status').value, type: $('filter-type').value.trim(), endpoint: $('filter-endpoint').value };
  const query = filterQuery(filters);
  query.set('limit', '25');
  if (cursor) query.set('before', cursor);
  const { events, next } = await api('GET', `/api/events?${query}`);
  shownFilters = filters;
  nextCursor = next;
  $('older').disabled = !next;
  $('newest').disabled = cursor === null;
  $('events-empty').hidden = events.length > 0;
  $('bulk').hidden = !(filters.status === 'dead' && events.length > 0);
  fill($('events').tBodies[0], events.map((e) => el('tr', { 'data-id': e.id },
    el('td', {}, time(e.received_at_ms)),
    el('td', {}, el('a', { href: eventLink(e.id, e.merchant, e.scope) }, e.id)),
    el('td', {}, e.type ?? ''),
    el('td', { class: 'amount' }, money(e.amount)),
    el('td', { class: `status status-${e.status}` }, e.status, e.reason ? ` (${e.reason})` : ''),
    el('td', {}, e.endpoint),
    el('td', {}, e.merchant),
    el('td', { class: 'tags' }, (e.tags ?? []).join(', ')),
  )));
}

// Replays every dead event the list's filters match, a page (500) per call until none is left.
async function replayDead() {
  const query = filterQuery(shownFilters);
  const what = [shownFilters.type, shownFilters.endpoint].filter(Boolean).join(', ');
  if (!confirm(`Replay every dead event${what ? ` (${what})` : ''}? Each is delivered again.`)) return;
  $('replay-dead').disabled = true;
  let [replayed, skipped] = [0, 0];
  try {
    for (let call = 0; call < 100; call++) {
      const r = await api('POST', `/api/events/replay?${query}`);
      replayed += r.replayed;
      skipped += r.skipped.length;
      $('bulk-result').textContent = `Replayed ${replayed}…`;
      if (!r.more) break;
    }
    $('bulk-result').textContent = `Replayed ${replayed} dead event${replayed === 1 ? '' : 's'}` +
      (skipped ? `; ${skipped} skipped (gone, or their endpoint has no upstream now)` : '') + '.';
  } catch (e) {
    $('bulk-result').textContent = `Stopped after ${replayed}: ${e.message}`;
    if (e instanceof Unauthorized) throw e;
  } finally {
    $('replay-dead').disabled = false;
  }
  cursor = null;
  await loadEvents();
}

// An amount in the currency's smallest unit (PayFlow's form), shown in its major unit:
// {value: 2500, currency: "PKR"} is "PKR 25.00" (in the browser's locale). The exponent is
// ISO 4217's, not the locale's display digits (which show PKR without decimals).
const ZERO_DECIMAL = new Set('BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF'.split(' '));
const THREE_DECIMAL = new Set('BHD IQD JOD KWD LYD OMR TND'.split(' '));

function money(amount) {
  if (!amount) return '';
  if (!amount.currency) return String(amount.value);
  const digits = ZERO_DECIMAL.has(amount.currency) ? 0 : THREE_DECIMAL.has(amount.currency) ? 3 : 2;
  try {
    return new Intl.NumberFormat(undefined, {
      style: 'currency', currency: amount.currency, minimumFractionDigits: digits, maximumFractionDigits: digits,
    }).format(amount.value / 10 ** digits);
  } catch {
    return `${amount.value} ${amount.currency}`; // not a currency code: as sent
  }
}

// ---------------------------------------------------------------- chart
// The chart is the server's last hour (GET /api/stats/history, 10 s buckets), so a reload
// keeps it; the figures beside it are live rates from the last two one-second samples.

const HOUR_MS = 3600 * 1000;
let samples = []; // the last two { t, received, delivered, failed } running totals
let buckets = []; // the server's { from_ms, to_ms, received, delivered, failed }

function startChart() {
  samples = [];
  buckets = [];
  const sample = async () => {
    const s = await api('GET', '/api/stats');
    samples = [...samples.slice(-1), { t: s.at_ms, received: s.received, delivered: s.delivered, failed: s.failed }];
    showRates();
  };
  const history = async () => {
    buckets = (await api('GET', '/api/stats/history')).buckets;
    drawChart();
  };
  sample().catch(onTimerError);
  history().catch(onTimerError);
  every(1000, sample);
  every(5000, history);
}
addEventListener('resize', drawChart);

function showRates() {
  const [a, b] = samples;
  for (const k of ['received', 'delivered', 'failed']) {
    const rate = a && b ? (b[k] - a[k]) / Math.max((b.t - a.t) / 1000, 0.001) : 0;
    $(`rate-${k}`).textContent = rate.toFixed(1);
  }
}

function drawChart() {
  const canvas = $('chart');
  const ctx = canvas.getContext('2d');
  // What the chart holds, for screen readers and tests: events counted in the hour shown.
  for (const k of ['received', 'delivered', 'failed']) {
    canvas.dataset[k] = String(buckets.reduce((n, b) => n + b[k], 0));
  }
  // Draw at the size it is shown (CSS stretches it), so lines and labels stay sharp.
  if (canvas.width !== canvas.clientWidth && canvas.clientWidth > 0) canvas.width = canvas.clientWidth;
  const { width: w, height: h } = canvas;
  ctx.clearRect(0, 0, w, h);
  const end = buckets.at(-1)?.to_ms ?? Date.now();
  const rate = (b, k) => b[k] / Math.max((b.to_ms - b.from_ms) / 1000, 1);
  const top = Math.max(1, ...buckets.flatMap((b) => [rate(b, 'received'), rate(b, 'delivered'), rate(b, 'failed')]));
  ctx.fillStyle = '#5b6470';
  ctx.font = '11px system-ui';
  ctx.fillText(`${top.toFixed(top < 10 ? 1 : 0)}/s`, 4, 12);
  ctx.fillText('1 h ago', 4, h - 4);
  ctx.fillText('now', w - 24, h - 4);
  const x = (ms) => w - ((end - ms) / HOUR_MS) * w;
  const colors = { received: '#2450c4', delivered: '#137333', failed: '#b42318' };
  for (const [k, color] of Object.entries(colors)) {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    buckets.forEach((b, i) => {
      const y = h - 16 - (rate(b, k) / top) * (h - 32);
      if (i === 0) ctx.moveTo(x(b.from_ms), y);
      ctx.lineTo(x(b.to_ms), y);
    });
    ctx.stroke();
  }
}

// ---------------------------------------------------------------- one event

// An event's address: ids are unique per merchant and de-duplication scope only, so every
// link names both.
function eventLink(id, merchant, scope) {
  return `#/event/${[id, merchant, scope].map(encodeURIComponent).join('/')}`;
}

function eventPath(id, merchant, scope, action = '') {
  const query = new URLSearchParams();
  if (merchant) query.set('merchant', merchant);
  if (scope) query.set('scope', scope);
  return `/api/events/${encodeURIComponent(id)}${action}` + (query.size ? `?${query}` : '');
}

async function showEvent(id, merchant, scope) {
  show('event');
  $('replay-result').textContent = '';
  await loadEvent(id, merchant, scope);
}

async function loadEvent(id, merchant, scope) {
  const e = await api('GET', eventPath(id, merchant, scope));
  $('event-title').textContent = e.id;
  Object.assign($('replay').dataset, { id: e.id, merchant: e.merchant, scope: e.scope });
  const facts = [
    ['Type', e.type ?? '—'], ['Status', e.status + (e.reason ? ` (${e.reason})` : '')],
    ['Endpoint', e.endpoint], ['Scope', e.scope], ['Merchant', e.merchant], ['Received', time(e.received_at_ms)],
    ['Request id', e.request_id], ['Tags', (e.tags ?? []).join(', ') || '—'],
  ];
  const step = e.plugin_step;
  if (step) {
    const next = step.next_attempt_at_ms ? `, next ${time(step.next_attempt_at_ms)}` : '';
    facts.push(['Plugin step', `${step.status} after ${step.attempts} run(s)${next}${step.error ? ` (${step.error})` : ''}`]);
    if (step.routes) facts.push(['Routes', step.routes.join(', ') || 'none matched']);
  }
  if (e.order_key) facts.push(['Ordering key', e.order_key]);
  $('skip').hidden = !(e.order_key && e.status === 'dead');
  $('event-summary').replaceChildren(...facts.flatMap(([k, v]) => [el('dt', {}, k), el('dd', { 'data-fact': k }, v)]));
  let body = e.body;
  try { body = JSON.stringify(JSON.parse(e.body), null, 2); } catch { /* shown as received */ }
  $('event-body').textContent = body;
  fill($('event-headers').tBodies[0], e.headers.map(([k, v]) => el('tr', {}, el('th', {}, k), el('td', {}, v))));
  fill($('event-runs').tBodies[0], e.plugin_runs.map((r) => el('tr', {},
    el('td', {}, r.attempt), el('td', {}, r.plugin), el('td', {}, r.version),
    el('td', { class: 'status' }, r.outcome),
    el('td', {}, `${(r.duration_us / 1000).toFixed(2)} ms`), el('td', {}, r.fuel_used),
    el('td', {}, r.detail ?? '', el('ul', { class: 'logs' }, r.logs.map(([level, msg]) => el('li', {}, `${level}: ${msg}`)))),
  )));
  fill($('event-deliveries').tBodies[0], e.deliveries.map((d) => el('tr', {},
    el('td', {}, d.upstream), el('td', { class: `status status-${d.status}` }, d.status),
    el('td', {}, d.attempts), el('td', {}, time(d.next_attempt_at_ms)),
  )));
  fill($('event-attempts').tBodies[0], e.attempts.map((a) => el('tr', {},
    el('td', {}, a.number), el('td', {}, a.upstream), el('td', {}, time(a.at_ms)),
    el('td', {}, `${a.duration_ms} ms`), el('td', {}, a.status_code ?? '—'),
    el('td', {}, el('code', {}, a.error ?? a.response ?? '')),
  )));
}

/** POSTs `action` (`/replay`, `/skip`) on the event shown, says what came of it, reloads it. */
async function onEvent(action, refused, said) {
  const { id, merchant, scope } = $('replay').dataset;
  const out = $('replay-result');
  try {
    const r = await api('POST', eventPath(id, merchant, scope, action));
    out.className = 'ok';
    out.textContent = said(r);
    setTimeout(() => loadEvent(id, merchant, scope).catch(onTimerError), 1000);
  } catch (e) {
    out.className = 'error';
    out.textContent = `${refused}: ${e.message}`;
  }
}

const replay = () => onEvent('/replay', 'Replay refused',
  (r) => (r.plugins ? 'Replayed: the plugins decide again.' : `Replayed: delivery to ${r.upstream} queued.`));
const skip = () => onEvent('/skip', 'Skip refused', (r) => `Skipped: the events with key ${r.key} behind it go on.`);

// ---------------------------------------------------------------- plugins

async function showPlugins() {
  show('plugins');
  const { plugins } = await api('GET', '/api/plugins');
  $('plugins-empty').hidden = plugins.length > 0;
  $('plugins').replaceChildren(...plugins.map(pluginCard));
}

function pluginCard(p) {
  const result = el('p', { class: 'result', role: 'status' });
  const file = el('input', { type: 'file', accept: '.wasm,application/wasm', 'aria-label': `component for ${p.name}` });
  const upload = async () => {
    if (!file.files.length) { result.className = 'result error'; result.textContent = 'Choose a .wasm component first.'; return; }
    await act(result, () => api('PUT', `/api/plugins/${encodeURIComponent(p.name)}`, file.files[0], 'application/wasm'),
      (s) => `Uploaded: version ${s.active_version} is active.`);
  };
  const rollback = () => act(result, () => api('POST', `/api/plugins/${encodeURIComponent(p.name)}/rollback`),
    (s) => `Rolled back: version ${s.active_version} is active.`);
  const share = el('input', { type: 'number', min: 1, max: 100, value: 10, class: 'share', 'aria-label': `canary share for ${p.name} (%)` });
  const canary = async () => {
    if (!file.files.length) { result.className = 'result error'; result.textContent = 'Choose a .wasm component first.'; return; }
    await act(result, () => api('PUT', `/api/plugins/${encodeURIComponent(p.name)}?canary=${encodeURIComponent(share.value)}`, file.files[0], 'application/wasm'),
      (s) => `Canary: version ${s.canary.version} takes ${s.canary.percent}% of events beside version ${s.active_version}.`);
  };
  const promote = () => act(result, () => api('POST', `/api/plugins/${encodeURIComponent(p.name)}/promote`),
    (s) => `Promoted: version ${s.active_version} is active for every event.`);
  const trial = el('div', { class: 'trial' });
  const tryIt = async () => {
    if (!file.files.length) { result.className = 'result error'; result.textContent = 'Choose a .wasm component first.'; return; }
    result.className = 'result'; result.textContent = 'Trying it on the latest 200 events…';
    try {
      const r = await api('POST', `/api/plugins/${encodeURIComponent(p.name)}/try?last=200`, file.files[0], 'application/wasm');
      result.className = 'result ok';
      result.textContent = `Tried beside version ${r.active_version} on ${r.totals.events} events: ${r.totals.same} same, ${r.totals.different} different, ${r.totals.failed} failed.`;
      trial.replaceChildren(trialTable(p, r));
    } catch (e) {
      if (e instanceof Unauthorized) return logout();
      result.className = 'result error'; result.textContent = e.message;
    }
  };
  const runs = Object.entries(p.runs ?? {}).map(([k, n]) => `${k} ${n}`).join(', ') || 'none yet';
  const figures = Object.fromEntries((p.by_version ?? []).map((f) => [f.version, f]));
  const c = p.canary;
  const canaryText = !c ? 'none' : c.state === 'running' ? `version ${c.version} on ${c.percent}% of events`
    : `last one, version ${c.version}: ${c.state.replace('_', ' ')}${c.reason ? ` (${c.reason})` : ''}`;
  return el('article', { class: 'plugin', 'data-plugin': p.name },
    el('h2', {}, p.name),
    el('dl', { class: 'facts' },
      el('dt', {}, 'Merchant'), el('dd', {}, p.merchant),
      el('dt', {}, 'Active version'), el('dd', { class: 'active-version' }, p.active_version ?? 'none'),
      el('dt', {}, 'Limits'), el('dd', {}, `fuel ${p.fuel}, ${p.timeout_ms} ms, ${p.memory_mb} MiB${p.warm ? ', warm' : ''}`),
      el('dt', {}, 'Runs since start'), el('dd', {}, runs),
      el('dt', {}, 'Canary'), el('dd', { class: 'canary' }, canaryText)),
    el('h3', {}, 'Versions'),
    el('table', { class: 'versions' },
      el('thead', {}, el('tr', {}, ['Version', 'SHA-256', 'Size', 'Source', 'Added', 'Runs', 'Failed', 'µs p50 / p99', ''].map((h) => el('th', {}, h)))),
      el('tbody', {}, p.versions.map((v) => { const f = figures[v.version]; return el('tr', {},
        el('td', {}, v.version), el('td', {}, el('code', {}, v.sha256.slice(0, 16))), el('td', {}, `${v.size} B`),
        el('td', {}, v.source), el('td', {}, time(v.created_at_ms)),
        el('td', { class: 'runs' }, f?.runs ?? 0), el('td', { class: 'failed' }, f?.failed ?? 0),
        el('td', {}, f ? `${f.time_us_p50} / ${f.time_us_p99}` : ''),
        el('td', {}, v.version === p.active_version ? 'active' : c?.state === 'running' && v.version === c.version ? 'canary' : '')); }))),
    el('h3', {}, 'Recent failures'),
    p.recent_failures.length === 0 ? el('p', {}, 'None since the gateway started.') :
      el('table', { class: 'failures' },
        el('thead', {}, el('tr', {}, ['Reason', 'Count', 'Last', 'Event', 'Message'].map((h) => el('th', {}, h)))),
        el('tbody', {}, p.recent_failures.map((f) => el('tr', {},
          el('td', {}, f.reason), el('td', {}, f.count), el('td', {}, time(f.last_at_ms)),
          el('td', {}, el('a', { href: eventLink(f.last_event_id, p.merchant, f.last_event_scope) }, f.last_event_id)),
          el('td', {}, f.last_message ?? ''))))),
    el('div', { class: 'row' }, file,
      el('button', { type: 'button', class: 'try', onclick: tryIt }, 'Try on recent events'),
      el('button', { type: 'button', class: 'upload', onclick: upload }, 'Upload'),
      el('label', {}, 'Canary share (%)', share),
      el('button', { type: 'button', class: 'canary-upload', onclick: canary }, 'Upload as canary'),
      c?.state === 'running' ? el('button', { type: 'button', class: 'promote', onclick: promote }, 'Promote') : null,
      el('button', { type: 'button', class: 'rollback', onclick: rollback }, 'Roll back')),
    result, trial);
}

/** A dry run's events whose outcome would change or fail, with what changed. */
function trialTable(p, r) {
  const shown = r.events.filter((e) => e.verdict !== 'same');
  if (shown.length === 0) return el('p', {}, 'No event would be handled differently.');
  return el('table', { class: 'trial-events' },
    el('thead', {}, el('tr', {}, ['Event', 'Type', 'Verdict', 'What changes'].map((h) => el('th', {}, h)))),
    el('tbody', {}, shown.map((e) => el('tr', { 'data-event': e.id },
      el('td', {}, el('a', { href: eventLink(e.id, p.merchant, e.scope) }, e.id)), el('td', {}, e.type ?? ''),
      el('td', { class: 'verdict' }, e.verdict), el('td', {}, el('ul', {}, e.changes.map((x) => el('li', {}, x))))))));
}

async function act(out, call, say) {
  try {
    const status = await call();
    await showPlugins();
    const card = document.querySelector(`[data-plugin="${CSS.escape(status.name)}"] .result`);
    card.className = 'result ok';
    card.textContent = say(status);
  } catch (e) {
    if (e instanceof Unauthorized) return logout();
    out.className = 'result error';
    out.textContent = e.message;
  }
}

// ---------------------------------------------------------------- endpoints and test webhooks

const TYPES = ['payment.succeeded', 'payment.failed', 'payment.cancelled', 'customer.created'];

async function showEndpoints() {
  show('endpoints');
  $('test-result').textContent = '';
  const { endpoints } = await api('GET', '/api/endpoints');
  fill($('endpoints').tBodies[0], endpoints.map((e) => {
    const type = el('select', { 'aria-label': `event type for ${e.path}` }, TYPES.map((t) => el('option', {}, t)));
    const send = async () => {
      const out = $('test-result');
      try {
        const r = await api('POST', '/api/test-webhook', JSON.stringify({ endpoint: e.path, type: type.value }));
        out.className = r.status < 300 ? 'ok' : 'error';
        out.textContent = `Sent ${r.id} (${r.type}) to ${r.endpoint}: ${r.status} ${JSON.stringify(r.reply)} `;
        out.dataset.eventId = r.id;
        // The event it created, one click away (a refused one was not stored: no link).
        if (r.status < 300) out.append(el('a', { id: 'test-event-link', href: eventLink(r.id, r.merchant, r.scope) }, 'Open the event'));
      } catch (err) {
        out.className = 'error';
        out.textContent = `Not sent: ${err.message}`;
      }
    };
    return el('tr', { 'data-endpoint': e.path },
      el('td', {}, el('code', {}, e.path)), el('td', {}, e.merchant), el('td', {}, e.mode), el('td', {}, e.scheme),
      el('td', {}, e.upstream ?? '—'), el('td', {}, e.plugins.join(' → ') || '—'),
      el('td', {}, el('div', { class: 'row' }, type, el('button', { type: 'button', class: 'send-test', onclick: send }, 'Send test webhook'))));
  }));
  await loadFlow();
  every(2000, loadFlow);
}

/** The upstreams' flow control and the held ordering keys, refreshed while shown. */
async function loadFlow() {
  const [{ upstreams }, { keys }] = await Promise.all([api('GET', '/api/upstreams'), api('GET', '/api/ordering')]);
  fill($('upstreams').tBodies[0], upstreams.map((u) => el('tr', { 'data-upstream': u.name },
    el('td', {}, u.name), el('td', {}, u.merchant), el('td', {}, u.ordering_key ?? '—'), el('td', {}, u.rate ?? '—'),
    el('td', { class: `breaker breaker-${u.breaker?.state ?? 'none'}` },
      u.breaker ? `${u.breaker.state} (opened ${u.breaker.opened}×)` : '—'),
    el('td', {}, u.pending ?? '—'), el('td', { class: 'behind' }, behind(u.behind_ms)),
    el('td', {}, u.delivered), el('td', {}, u.retried), el('td', {}, u.dead))));
  $('held-empty').hidden = keys.length > 0;
  fill($('held').tBodies[0], keys.map((k) => el('tr', { 'data-key': k.key },
    el('td', {}, k.merchant), el('td', {}, el('code', {}, k.key)),
    el('td', {}, el('a', { href: eventLink(k.event_id, k.merchant, k.scope) }, k.event_id)),
    el('td', { class: `status status-${k.status}` }, k.status), el('td', {}, k.attempts), el('td', {}, k.waiting),
    el('td', {}, time(k.next_attempt_at_ms)))));
}

// ---------------------------------------------------------------- signature checker

let verifyModule = null;

function showChecker() {
  show('checker');
  $('checker-missing').hidden = session.checker;
  $('check').disabled = !session.checker;
}

async function check() {
  const out = $('check-result');
  try {
    verifyModule ??= await import('/assets/payflow-verify/index.js');
    const headers = $('check-headers').value.split('\n').map((line) => line.trim()).filter(Boolean).map((line) => {
      const at = line.indexOf(':');
      return at < 0 ? [line, ''] : [line.slice(0, at).trim(), line.slice(at + 1).trim()];
    });
    const result = verifyModule.verify({
      scheme: $('check-scheme').value,
      secret: $('check-secret').value,
      headers,
      body: $('check-body').value,
      toleranceSecs: Number($('check-tolerance').value || 300),
    });
    out.className = result.ok ? 'ok' : 'error';
    out.textContent = result.ok ? 'Valid signature.' : `Not valid: ${result.reason}${result.message ? ` (${result.message})` : ''}`;
  } catch (e) {
    out.className = 'error';
    out.textContent = `The checker could not run: ${e.message}`;
  }
}

// ---------------------------------------------------------------- wiring

$('login-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  $('login-error').textContent = '';
  try {
    await login($('token').value.trim());
    $('token').value = '';
    if (location.hash === '' || location.hash === '#/login') location.hash = '#/events';
    else await route();
  } catch (e) {
    $('login-error').textContent = e instanceof Unauthorized ? 'That token was refused.' : `Cannot log in: ${e.message}`;
  }
});
$('logout').addEventListener('click', logout);
$('filters').addEventListener('submit', (event) => { event.preventDefault(); cursor = null; loadEvents().catch(onTimerError); });
$('replay-dead').addEventListener('click', () => replayDead().catch(onTimerError));
$('older').addEventListener('click', () => { if (nextCursor) { cursor = nextCursor; loadEvents().catch(onTimerError); } });
$('newest').addEventListener('click', () => { cursor = null; loadEvents().catch(onTimerError); });
$('replay').addEventListener('click', replay);
$('skip').addEventListener('click', skip);
$('checker-form').addEventListener('submit', (event) => { event.preventDefault(); check(); });
window.addEventListener('hashchange', () => route());
route();
