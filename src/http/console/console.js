// The loraflow console. Plain JavaScript, no dependencies. The tenant token
// lives in this tab's sessionStorage and travels only as an Authorization
// header; pages are built with DOM calls (never HTML strings), so no text
// from the API is ever parsed as markup.
'use strict';

const TOKEN_KEY = 'loraflow.token';
const $ = (selector) => document.querySelector(selector);
const token = () => sessionStorage.getItem(TOKEN_KEY);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'class') e.className = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined && c !== false) e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

// Replace `node`'s children, skipping the absent ones (null, undefined,
// false): `cond ? el(...) : null` reads well in a page's layout.
function fill(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

function svg(tag, attrs, ...children) {
  const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  for (const c of children) e.append(c instanceof Node ? c : String(c));
  return e;
}

class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.status || '';
    this.fields = (e.details || [])
      .filter((d) => d['@type'] === 'type.googleapis.com/google.rpc.BadRequest')
      .flatMap((d) => d.fieldViolations || []);
  }
}

function describe(err) {
  if (!(err instanceof ApiError)) return String(err);
  const lines = [`${err.code || 'ERROR'}: ${err.message}`];
  for (const f of err.fields) lines.push(`  ${f.field}: ${f.description}`);
  return lines.join('\n');
}

function showError(message) {
  const box = $('#error');
  box.textContent = message || '';
  box.hidden = !message;
}

function headers(extra) {
  return Object.assign({ Authorization: `Bearer ${token()}`, 'X-Requested-With': 'loraflow-console' }, extra || {});
}

async function api(method, path, body) {
  const init = { method, headers: headers(), credentials: 'omit', cache: 'no-store' };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const text = await resp.text();
  let data = {};
  try { data = text ? JSON.parse(text) : {}; } catch (_) { data = {}; }
  if (!resp.ok) {
    if (resp.status === 401) askToken('The token was refused; enter a tenant token.');
    throw new ApiError(resp.status, data);
  }
  return data;
}

// Server-Sent Events over fetch (EventSource cannot send the token as a
// header): reconnects with Last-Event-ID until the stream says `end`.
async function follow(path, after, onEvent) {
  let last = after;
  let pause = 1000;
  for (;;) {
    try {
      const extra = { Accept: 'text/event-stream' };
      if (last !== null && last !== undefined) extra['Last-Event-ID'] = String(last);
      const resp = await fetch(path, { headers: headers(extra), credentials: 'omit', cache: 'no-store' });
      if (!resp.ok) throw new ApiError(resp.status, await resp.json().catch(() => ({})));
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let at;
        while ((at = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, at);
          buf = buf.slice(at + 2);
          const ev = { id: null, event: 'message', data: '' };
          for (const line of block.split('\n')) {
            if (line.startsWith('id:')) ev.id = line.slice(3).trim();
            else if (line.startsWith('event:')) ev.event = line.slice(6).trim();
            else if (line.startsWith('data:')) ev.data += line.slice(5).trimStart();
          }
          if (!ev.data && ev.id === null) continue;
          if (ev.id !== null) last = ev.id;
          if (ev.event === 'end') return;
          if (ev.event !== 'error') onEvent(ev);
        }
      }
      pause = 1000;
    } catch (e) {
      if (e instanceof ApiError && e.status < 500) { showError(describe(e)); return; }
    }
    await new Promise((r) => setTimeout(r, pause));
    pause = Math.min(pause * 2, 15000);
  }
}

function askToken(message) {
  $('#token-form').hidden = false;
  $('#forget').hidden = true;
  $('#who').textContent = message || '';
}

const STATES = ['Pending', 'Submitted', 'Processing', 'InReview', 'Approved', 'Published', 'Failed'];
const badge = (state) => el('span', { class: `state ${state}` }, state);
const when = (t) => (t ? new Date(t).toLocaleString() : '');
const num = (x, digits = 4) => (typeof x === 'number' ? x.toPrecision(digits) : '–');
const variant = (v) => (typeof v === 'string' ? v : Object.keys(v || {})[0] || '');
const jobLink = (id) => el('a', { href: `/jobs/${encodeURIComponent(id)}` }, id.slice(0, 8));

// The running step's progress, as text and a bar.
function progressOf(status) {
  const running = status.steps.find((s) => s.progress && variant(s.status) === 'Leased') ||
    status.steps.filter((s) => s.progress).slice(-1)[0];
  if (!running) return el('span', { class: 'muted' }, '–');
  const p = running.progress;
  const bits = [`${running.kind} ${Math.round(p.percent)}%`];
  if (p.epoch !== undefined) bits.push(`epoch ${p.epoch}`);
  if (p.loss !== undefined) bits.push(`loss ${num(p.loss)}`);
  return el('span', { class: 'progress', 'data-percent': p.percent },
    el('progress', { max: 100, value: p.percent }), ' ', bits.join(' · '));
}

// ---- Jobs ----------------------------------------------------------------

async function jobsPage() {
  const q = new URLSearchParams(location.search);
  const input = (name, hint) => el('input', { name, placeholder: hint, value: q.get(name) || '' });
  const state = el('select', { name: 'state', id: 'state-filter' }, el('option', { value: '' }, 'any state'),
    STATES.map((s) => el('option', { value: s, selected: q.get('state') === s }, s)));
  const form = el('form', { class: 'filters', id: 'filters' }, state, input('base_model', 'base model'),
    input('engine', 'engine'), input('label', 'label key=value'), el('button', { type: 'submit' }, 'Filter'));
  const body = el('tbody');
  const updated = el('p', { class: 'muted', id: 'updated' });
  fill($('#main'), el('h1', {}, 'Jobs'), form,
    el('table', { id: 'jobs' }, el('thead', {}, el('tr', {},
      ['Job', 'Subject', 'State', 'Base model', 'Engine', 'Progress', 'Queue', 'Created'].map((h) => el('th', {}, h)))), body),
    updated);
  async function refresh() {
    const query = new URLSearchParams(location.search);
    query.set('page_size', '100');
    try {
      const page = await api('GET', `/v1/jobs?${query}`);
      body.replaceChildren(...page.jobs.map((j) => el('tr', { 'data-job': j.status.job_id, 'data-state': j.status.state },
        el('td', {}, jobLink(j.status.job_id)), el('td', {}, j.status.naming.subject), el('td', {}, badge(j.status.state)),
        el('td', {}, j.status.base_model), el('td', {}, j.status.engine), el('td', {}, progressOf(j.status)),
        el('td', {}, j.queue_position === undefined ? '' : j.queue_position), el('td', {}, when(j.status.created_at)))));
      if (!page.jobs.length) body.append(el('tr', {}, el('td', { colspan: 8, class: 'muted' }, 'No jobs.')));
      updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
      showError();
    } catch (e) { showError(describe(e)); }
  }
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const next = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) next.append(k, v);
    history.replaceState(null, '', `/?${next}`);
    refresh();
  });
  await refresh();
  setInterval(refresh, 2000);
}

// ---- One job ---------------------------------------------------------------

function lossPlot(epochs) {
  const points = epochs.filter((e) => typeof e.loss === 'number' || typeof e.validation_loss === 'number');
  if (!points.length) return el('p', { class: 'muted' }, 'No losses yet.');
  const w = 480, h = 200, pad = 36;
  const values = points.flatMap((e) => [e.loss, e.validation_loss]).filter((v) => typeof v === 'number');
  const lo = Math.min(...values), hi = Math.max(...values);
  const first = points[0].epoch, lastEpoch = points[points.length - 1].epoch;
  const x = (epoch) => pad + (lastEpoch === first ? 0.5 : (epoch - first) / (lastEpoch - first)) * (w - 2 * pad);
  const y = (v) => h - pad - (hi === lo ? 0.5 : (v - lo) / (hi - lo)) * (h - 2 * pad);
  const line = (key, cls) => svg('polyline', { class: cls, points: points.filter((e) => typeof e[key] === 'number').map((e) => `${x(e.epoch)},${y(e[key])}`).join(' ') });
  return svg('svg', { class: 'plot', id: 'loss-plot', width: w, height: h, viewBox: `0 0 ${w} ${h}`, role: 'img', 'aria-label': 'loss by epoch' },
    svg('text', { x: 4, y: 14 }, `loss ${num(hi)}`), svg('text', { x: 4, y: h - 4 }, `${num(lo)} · epochs ${first}–${lastEpoch}`),
    line('loss', 'loss'), line('validation_loss', 'validation'),
    svg('text', { x: w - 4, y: 14, 'text-anchor': 'end' }, 'solid: training · dashed: validation'));
}

async function jobPage(id) {
  const path = `/v1/jobs/${encodeURIComponent(id)}`;
  const images = new Map();
  const ui = { chosen: null, sheet: false, pending: null, reason: '', deliveries: null };
  let job = null;

  async function image(sha, img) {
    try {
      if (!images.has(sha)) {
        const resp = await fetch(`${path}/artifacts/${encodeURIComponent(sha)}`, { headers: headers(), credentials: 'omit' });
        if (!resp.ok) throw new ApiError(resp.status, await resp.json().catch(() => ({})));
        images.set(sha, URL.createObjectURL(await resp.blob()));
      }
      img.src = images.get(sha);
    } catch (e) { img.alt = `not loaded: ${describe(e)}`; }
  }
  const picture = (artifact) => { const img = el('img', { alt: artifact.name, 'data-sha': artifact.sha256 }); image(artifact.sha256, img); return img; };

  function ask(label, body, action) {
    ui.pending = { label, body, action };
    render();
  }

  async function confirm() {
    const p = ui.pending;
    ui.pending = null;
    try {
      const body = typeof p.body === 'function' ? p.body() : p.body;
      job = await api('POST', `${path}/${p.action}`, body);
      showError();
    } catch (e) { showError(describe(e)); }
    render();
  }

  function actions(status) {
    const s = status.state;
    const reason = () => el('input', { id: 'reason', placeholder: 'reason', value: ui.reason, oninput: (ev) => { ui.reason = ev.target.value; } });
    const out = [];
    if (['Pending', 'Submitted', 'Processing'].includes(s)) {
      out.push(reason(), el('button', { id: 'cancel', class: 'danger', onclick: () => ask('Cancel this job', () => ({ reason: ui.reason, etag: job.etag }), 'cancel') }, 'Cancel'));
    }
    if (s === 'Processing') {
      out.push(el('button', { id: 'save-now', onclick: () => ask('Save a checkpoint now', {}, 'save-now') }, 'Save now'),
        el('button', { id: 'sample-now', onclick: () => ask('Render samples now', {}, 'sample-now') }, 'Sample now'));
    }
    if (s === 'InReview') {
      const epochs = Object.keys(status.epochs).map(Number);
      const select = el('select', { id: 'epoch', onchange: (ev) => { ui.chosen = Number(ev.target.value); render(); } },
        epochs.map((n) => el('option', { value: n, selected: n === ui.chosen }, `epoch ${n}`)));
      out.push(select, el('button', { id: 'approve', class: 'primary', onclick: () => ask(`Approve epoch ${ui.chosen} and publish it`, () => ({ epoch: ui.chosen, etag: job.etag }), 'approve') }, 'Approve'),
        reason(), el('button', { id: 'reject', class: 'danger', onclick: () => ask('Reject every epoch', () => ({ reason: ui.reason, etag: job.etag }), 'reject') }, 'Reject'));
    }
    if (s === 'Failed') out.push(el('button', { id: 'retry', onclick: () => ask('Run this job again as a new job', {}, 'retry') }, 'Retry'));
    return out;
  }

  function sheet(status) {
    const epochs = Object.values(status.epochs);
    if (!epochs.length) return el('p', { class: 'muted' }, 'No epochs saved yet.');
    return el('div', { class: 'sheet', id: 'sheet' }, epochs.map((e) => el('div', {
      class: `epoch${e.epoch === ui.chosen ? ' chosen' : ''}`, 'data-epoch': e.epoch,
    }, el('h3', {}, `Epoch ${e.epoch}`), el('div', {}, `loss ${num(e.loss)}`), el('div', {}, `validation ${num(e.validation_loss)}`),
    (e.samples || []).map(picture),
    status.state === 'InReview' ? el('button', { class: 'choose', 'data-epoch': e.epoch, onclick: () => { ui.chosen = e.epoch; render(); } }, `Choose epoch ${e.epoch}`) : null)));
  }

  function deliveries() {
    if (!ui.deliveries) return el('button', { id: 'show-deliveries', onclick: async () => {
      try { ui.deliveries = (await api('GET', `${path}/webhook-deliveries?page_size=100`)).deliveries; render(); } catch (e) { showError(describe(e)); }
    } }, 'Show webhook deliveries');
    if (!ui.deliveries.length) return el('p', { class: 'muted', id: 'deliveries' }, 'No webhook deliveries.');
    return el('table', { id: 'deliveries' }, el('tr', {}, ['Event', 'URL', 'State', 'Attempts', 'Last status', 'Last error'].map((h) => el('th', {}, h))),
      ui.deliveries.map((d) => el('tr', {}, el('td', {}, `${d.delivery.sequence} ${d.delivery.event_type}`), el('td', {}, d.delivery.url),
        el('td', {}, variant(d.delivery.state)), el('td', {}, d.delivery.attempts), el('td', {}, d.delivery.last_status || ''), el('td', {}, d.delivery.last_error || ''))));
  }

  function render() {
    const st = job.status;
    const epochs = Object.keys(st.epochs).map(Number);
    if (ui.chosen === null && epochs.length) {
      const scored = Object.values(st.epochs).filter((e) => typeof e.validation_loss === 'number');
      ui.chosen = scored.length ? scored.reduce((a, b) => (b.validation_loss < a.validation_loss ? b : a)).epoch : Math.max(...epochs);
    }
    const reports = st.artifacts.filter((a) => /\.(png|jpe?g|webp)$/i.test(a.name));
    fill($('#main'), 
      el('h1', {}, `${st.naming.subject} `, badge(st.state)),
      el('p', { class: 'muted' }, `job ${st.job_id} · ${st.base_model} · ${st.engine} · etag ${job.etag} · created ${when(st.created_at)}`,
        ' · ', el('a', { href: `/jobs/${encodeURIComponent(st.job_id)}/history`, id: 'history-link' }, 'history')),
      el('div', { class: 'actions', id: 'actions' }, actions(st)),
      ui.pending ? el('div', { class: 'confirm', id: 'confirm-bar' }, `${ui.pending.label}?`,
        el('button', { id: 'confirm', class: 'primary', onclick: confirm }, 'Confirm'),
        el('button', { id: 'back', onclick: () => { ui.pending = null; render(); } }, 'Back')) : null,
      st.failure ? el('p', { class: 'bad', id: 'failure' }, `${variant(st.failure.reason)}: ${st.failure.message}`) : null,
      st.published ? el('p', { class: 'ok', id: 'published' }, `Published epoch ${st.approved_epoch}: ${st.published.uri}`) : null,
      el('h2', {}, 'Progress'),
      el('p', { id: 'progress' }, progressOf(st), job.eta_seconds !== undefined ? ` · about ${Math.round(job.eta_seconds)} s left` : '',
        job.queue_position !== undefined ? ` · queue position ${job.queue_position}` : ''),
      el('table', { id: 'steps' }, el('tr', {}, ['Step', 'Kind', 'Status', 'Attempt', 'Executor', 'Progress', 'Last error'].map((h) => el('th', {}, h))),
        st.steps.map((s) => el('tr', { 'data-step': s.id }, el('td', {}, s.id), el('td', {}, s.kind), el('td', {}, variant(s.status)),
          el('td', {}, `${s.attempt}${s.max_attempts ? `/${s.max_attempts}` : ''}`), el('td', {}, s.executor || ''),
          el('td', {}, variant(s.status) === 'Completed' ? 'done'
            : s.progress ? `${Math.round(s.progress.percent)}%${s.progress.message ? ` ${s.progress.message}` : ''}` : ''),
          el('td', {}, s.last_error ? `${variant(s.last_error.kind)}: ${s.last_error.message}` : '')))),
      Object.keys(job.waiting_for).length ? el('p', { class: 'muted' }, Object.entries(job.waiting_for).map(([k, v]) => `${k}: ${v}`).join('; ')) : null,
      el('h2', {}, 'Loss'), lossPlot(Object.values(st.epochs)),
      el('h2', {}, 'Review'),
      el('button', { id: 'open-sheet', onclick: () => { ui.sheet = !ui.sheet; render(); } }, ui.sheet ? 'Hide contact sheet' : 'Contact sheet'),
      ui.sheet ? sheet(st) : null,
      reports.length ? el('div', { class: 'reports', id: 'reports' }, reports.map((a) => el('figure', {}, picture(a), el('figcaption', {}, a.name)))) : null,
      el('h2', {}, 'Webhook deliveries'), deliveries());
  }

  let scheduled = false;
  async function reload() {
    scheduled = false;
    try { job = await api('GET', path); render(); } catch (e) { showError(describe(e)); }
  }
  try { job = await api('GET', path); } catch (e) { showError(describe(e)); return; }
  render();
  follow(`${path}/events`, job.status.last_position, () => {
    if (!scheduled) { scheduled = true; setTimeout(reload, 250); }
  }).then(reload);
}

// ---- History, queue, fleet ------------------------------------------------------

async function historyPage(id) {
  const path = `/v1/jobs/${encodeURIComponent(id)}`;
  const check = el('p', { id: 'verification' }, 'Verifying the log…');
  const body = el('tbody');
  fill($('#main'), el('h1', {}, 'History ', el('a', { href: `/jobs/${encodeURIComponent(id)}` }, id.slice(0, 8))), check,
    el('table', { id: 'events' }, el('thead', {}, el('tr', {}, ['Position', 'Sequence', 'Event', 'Recorded', 'Details'].map((h) => el('th', {}, h)))), body));
  try {
    const history = await api('GET', `${path}/history`);
    body.replaceChildren(...history.events.map((e) => el('tr', {}, el('td', {}, e.position), el('td', {}, e.sequence), el('td', {}, e.event_type),
      el('td', {}, when(e.recorded_at)), el('td', {}, el('code', {}, JSON.stringify(Object.values(e.payload)[0] || {}).slice(0, 200))))));
    const v = await api('GET', `${path}/verification`);
    check.className = v.intact ? 'ok' : 'bad';
    check.textContent = v.intact ? `Log verified: ${v.events} events, chain and signatures intact.` : `Log does NOT verify: ${v.verdict}`;
  } catch (e) { showError(describe(e)); }
}

async function queuePage() {
  const body = el('tbody');
  fill($('#main'), el('h1', {}, 'Queue'), el('table', { id: 'queue' }, el('thead', {}, el('tr', {},
    ['Position', 'Job', 'Subject', 'State', 'Waiting for'].map((h) => el('th', {}, h)))), body));
  async function refresh() {
    try {
      const pages = await Promise.all(['Submitted', 'Processing'].map((s) => api('GET', `/v1/jobs?state=${s}&page_size=500`)));
      const jobs = pages.flatMap((p) => p.jobs).filter((j) => j.queue_position !== undefined).sort((a, b) => a.queue_position - b.queue_position);
      body.replaceChildren(...jobs.map((j) => el('tr', {}, el('td', {}, j.queue_position), el('td', {}, jobLink(j.status.job_id)),
        el('td', {}, j.status.naming.subject), el('td', {}, badge(j.status.state)), el('td', {}, Object.values(j.waiting_for).join('; ')))));
      if (!jobs.length) body.append(el('tr', {}, el('td', { colspan: 5, class: 'muted' }, 'Nothing queued.')));
      showError();
    } catch (e) { showError(describe(e)); }
  }
  await refresh();
  setInterval(refresh, 2000);
}

async function fleetPage() {
  const body = el('tbody');
  fill($('#main'), el('h1', {}, 'Fleet'), el('table', { id: 'fleet' }, el('thead', {}, el('tr', {},
    ['Executor', 'Instance', 'Runs', 'GPU', 'Registered', 'Last heartbeat', 'Your leases', "Others' leases"].map((h) => el('th', {}, h)))), body));
  async function refresh() {
    try {
      const page = await api('GET', '/v1/executors?page_size=500');
      body.replaceChildren(...page.executors.map((x) => el('tr', {}, el('td', {}, x.executor_id), el('td', {}, x.instance_id || ''),
        el('td', {}, `${x.capabilities.kinds.join(', ')} (${x.capabilities.engines.join(', ')})`),
        el('td', {}, x.capabilities.gpu ? `${x.capabilities.gpu_name || 'GPU'} ${x.capabilities.vram_gb} GB` : 'CPU'),
        el('td', {}, when(x.register_time)), el('td', {}, when(x.last_seen_time)),
        el('td', {}, x.leases.map((l) => el('div', {}, jobLink(l.job_id), ` ${l.step_id}`))), el('td', {}, x.other_tenants_leases))));
      if (!page.executors.length) body.append(el('tr', {}, el('td', { colspan: 8, class: 'muted' }, 'No executors connected.')));
      showError();
    } catch (e) { showError(describe(e)); }
  }
  await refresh();
  setInterval(refresh, 5000);
}

async function start() {
  $('#token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('#token').value.trim());
    location.reload();
  });
  $('#forget').addEventListener('click', () => { sessionStorage.removeItem(TOKEN_KEY); location.reload(); });
  if (!token()) { askToken('Enter your tenant token to begin.'); return; }
  try {
    const s = await api('GET', '/v1/service-status');
    $('#who').textContent = `tenant ${s.tenant}`;
    $('#forget').hidden = false;
  } catch (e) {
    if (e.status !== 401) showError(describe(e));
    return;
  }
  const pages = { jobs: jobsPage, job: jobPage, history: historyPage, queue: queuePage, fleet: fleetPage };
  await pages[document.body.dataset.page](document.body.dataset.job);
}

start();
