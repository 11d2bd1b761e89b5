// gleaner console: plain JS, no build step. Reads the scheduler's API with
// the same bearer token as the CLI (kept in sessionStorage for this tab).
'use strict';

const POLL_MS = 1000;        // overview (the server shares one read per 0.5 s)
const APPS_MS = 2000;
const HARVEST_MS = 15000;    // agents rewrite harvest/<node> every 60 s
const TOKEN_KEY = 'gleaner-token';

const S = {
  token: sessionStorage.getItem(TOKEN_KEY),
  ov: null, harvest: null, apps: null, deps: null, job: null, jobId: null,
  known: {},      // node -> last info seen this session (to show it once lost)
  history: {},    // job id -> transitions seen while the console was open
  updated: null, error: null, lastHtml: '',
  metric: 'cpus', hnode: '', filter: '',
};

const $ = (id) => document.getElementById(id);
const esc = (v) => String(v ?? '').replace(/[&<>"']/g, (c) =>
  ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
// Numbers as the tests compare them: at most 2 decimals.
const num = (x) => (x == null ? '' : String(Number(Number(x).toFixed(2))));
const pct = (x) => (x == null ? '' : (100 * x).toFixed(1) + '\u00a0%');
const ago = (t) => {
  if (!t) return '';
  const s = Math.max(0, (Date.now() - Date.parse(t)) / 1000);
  return s < 90 ? s.toFixed(0) + ' s ago' : s < 5400 ? (s / 60).toFixed(0) + ' min ago' : (s / 3600).toFixed(1) + ' h ago';
};
const time = (t) => (t ? new Date(t).toLocaleTimeString() : '');

// ---- token ----------------------------------------------------------------
(function takeTokenFromUrl() {
  const u = new URL(location.href);
  const t = u.searchParams.get('token');
  if (t) {
    S.token = t;
    sessionStorage.setItem(TOKEN_KEY, t);
    u.searchParams.delete('token');
    history.replaceState(null, '', u.pathname + u.search + u.hash); // never left in the address bar
  }
})();

class AuthError extends Error {}

async function api(path) {
  const headers = { Accept: 'application/json' };
  if (S.token) headers.Authorization = 'Bearer ' + S.token;
  const r = await fetch(path, { headers, cache: 'no-store' });
  if (r.status === 401) throw new AuthError('the token was refused');
  if (!r.ok) {
    let msg = r.status + '';
    try { const b = await r.json(); msg += ': ' + (b.error || b.message || ''); } catch (_) { /* not JSON */ }
    throw new Error(path + ' ' + msg);
  }
  return r.json();
}

function showLogin(msg) {
  $('login').hidden = false;
  $('page').hidden = true;
  $('logout').hidden = true;
  $('login-error').textContent = msg || '';
  $('token').focus();
}

function hideLogin() {
  $('login').hidden = true;
  $('page').hidden = false;
  $('logout').hidden = !S.token;
}

// ---- data -------------------------------------------------------------------
function noteJobs(ov) {
  const now = new Date().toISOString();
  for (const j of ov.jobs) {
    const h = S.history[j.id] || (S.history[j.id] = []);
    const last = h[h.length - 1];
    const cur = { t: now, state: j.state, node: j.node || '', attempt: j.attempt, message: j.message || '' };
    if (!last || last.state !== cur.state || last.node !== cur.node || last.attempt !== cur.attempt || last.message !== cur.message) {
      h.push(cur);
      if (h.length > 50) h.shift();
    }
  }
}

async function pollOverview() {
  const ov = await api('/ui/api/overview');
  for (const n of ov.nodes) S.known[n.node] = n;
  noteJobs(ov);
  S.ov = ov;
}

async function pollHarvest() {
  S.harvest = await api('/ui/api/harvest?points=60');
}

async function pollApps() {
  const [apps, deps] = await Promise.all([api('/v2/apps?embed=apps.tasks'), api('/v2/deployments')]);
  S.apps = apps.apps; S.deps = deps;
}

async function pollJob() {
  if (S.jobId) S.job = await api('/v1/jobs/' + encodeURIComponent(S.jobId));
}

let timers = {};
function every(name, ms, fn) {
  const run = async () => {
    if (!document.hidden && S.token !== null) {
      try { await fn(); S.error = null; S.updated = new Date(); }
      catch (e) {
        if (e instanceof AuthError) { stopAll(); showLogin(e.message); return; }
        S.error = e.message;
      }
      render();
    }
    timers[name] = setTimeout(run, ms);
  };
  clearTimeout(timers[name]);
  run();
}
function stopAll() { for (const k in timers) clearTimeout(timers[k]); timers = {}; }

function route() {
  const [, page = 'fleet', arg = ''] = location.hash.split('/');
  // A malformed escape (#/jobs/%) is shown as typed rather than stopping the page.
  let decoded = arg;
  try { decoded = decodeURIComponent(arg); } catch (_) { /* keep arg */ }
  return { page, arg: decoded };
}

function start() {
  hideLogin();
  const { page, arg } = route();
  stopAll();
  every('overview', POLL_MS, pollOverview);
  if (page === 'fleet' || page === 'harvest') every('harvest', HARVEST_MS, pollHarvest);
  if (page === 'apps') every('apps', APPS_MS, pollApps);
  if (page === 'jobs') { S.jobId = arg; S.job = null; every('job', APPS_MS, pollJob); } else S.jobId = null;
  S.lastHtml = '';
  render();
}

// ---- drawing helpers --------------------------------------------------------
function spark(points, w, h, series) {
  // series: [{i: column, cls}]; points: [[t, ...]]
  if (!points || points.length < 2) return '<span class="muted">–</span>';
  let max = 0;
  for (const p of points) for (const s of series) max = Math.max(max, p[s.i]);
  max = max || 1;
  const x = (k) => (k * (w - 2)) / (points.length - 1) + 1;
  const y = (v) => h - 1 - (v / max) * (h - 2);
  const lines = series.map((s) =>
    `<polyline fill="none" stroke="${s.color}" stroke-width="1.5" points="${points.map((p, k) => x(k).toFixed(1) + ',' + y(p[s.i]).toFixed(1)).join(' ')}"/>`).join('');
  return `<svg class="spark" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}" role="img" aria-label="${esc(series.map((s) => s.label).join(' vs '))}, last hour">${lines}</svg>`;
}

const COLOR = { biz: '#c2410c', batch: '#15803d', res: '#0b5cad', bad: '#b42318' };

function chart(points, metric) {
  const [ri, bi, zi] = metric === 'cpus' ? [1, 3, 5] : [2, 4, 6];
  if (!points || points.length < 2) return '<p class="muted">Not enough history yet (one sample every 15 s, published every 60 s).</p>';
  const W = 800, H = 240, L = 50, B = 20;
  let max = 0;
  for (const p of points) max = Math.max(max, p[ri], p[bi], p[zi], p[zi] + p[bi]);
  max = max * 1.1 || 1;
  const t0 = points[0][0], t1 = points[points.length - 1][0] || t0 + 1;
  const x = (t) => L + ((t - t0) / Math.max(1, t1 - t0)) * (W - L - 5);
  const y = (v) => H - B - (v / max) * (H - B - 10);
  const line = (i, color, step) => {
    let d = '';
    points.forEach((p, k) => {
      if (k === 0) d += `M${x(p[0]).toFixed(1)},${y(p[i]).toFixed(1)}`;
      else if (step) d += `H${x(p[0]).toFixed(1)}V${y(p[i]).toFixed(1)}`;
      else d += `L${x(p[0]).toFixed(1)},${y(p[i]).toFixed(1)}`;
    });
    return `<path d="${d}" fill="none" stroke="${color}" stroke-width="2"/>`;
  };
  let shrinks = '';
  let count = 0;
  for (let k = 1; k < points.length; k++) {
    if (points[k][ri] < points[k - 1][ri] - 1e-9) {
      count++;
      const xx = x(points[k][0]).toFixed(1);
      shrinks += `<line x1="${xx}" x2="${xx}" y1="10" y2="${H - B}" stroke="${COLOR.bad}" stroke-dasharray="3 3"/>`;
    }
  }
  const ticks = [0, 0.5, 1].map((f) => `<text x="4" y="${(y(max / 1.1 * f) + 4).toFixed(1)}" font-size="11">${num(max / 1.1 * f)}</text>`).join('');
  const axis = `<text x="${L}" y="${H - 4}" font-size="11">${esc(time(t0 * 1000))}</text><text x="${W - 70}" y="${H - 4}" font-size="11">${esc(time(t1 * 1000))}</text>`;
  const unit = metric === 'cpus' ? 'CPUs' : 'MB';
  return `<svg class="chart" viewBox="0 0 ${W} ${H}" role="img" aria-label="business, reservation and batch ${unit} over time; ${count} shrink(s)">` +
    ticks + axis + shrinks + line(zi, COLOR.biz) + line(ri, COLOR.res, true) + line(bi, COLOR.batch) + '</svg>' +
    `<p class="legend"><span><i class="sw sw-biz"></i>business ${unit}</span><span><i class="sw sw-res"></i>reservation left to gleaner</span><span><i class="sw sw-batch"></i>batch used</span><span><i class="sw sw-shrink"></i>monitor shrank it (${count})</span></p>`;
}

function ringOf(node) {
  return S.harvest && S.harvest.nodes.find((r) => r.node === node);
}

// Fleet series: per node and minute the mean (the reservation: its minimum,
// so a shrink is not averaged away), then summed over the nodes.
function fleetSeries() {
  if (!S.harvest) return [];
  const total = new Map();
  for (const r of S.harvest.nodes) {
    const per = new Map();
    for (const p of r.samples) {
      const t = Math.floor(p[0] / 60) * 60;
      const b = per.get(t) || { n: 0, v: [t, Infinity, Infinity, 0, 0, 0, 0] };
      b.n++;
      for (let i = 1; i < 7; i++) b.v[i] = i <= 2 ? Math.min(b.v[i], p[i]) : b.v[i] + p[i];
      per.set(t, b);
    }
    for (const [t, b] of per) {
      const sum = total.get(t) || [t, 0, 0, 0, 0, 0, 0];
      for (let i = 1; i < 7; i++) sum[i] += i <= 2 ? b.v[i] : b.v[i] / b.n;
      total.set(t, sum);
    }
  }
  return [...total.values()].sort((a, b) => a[0] - b[0]);
}

// ---- pages -----------------------------------------------------------------
function roleCells(roles) {
  const names = Object.keys(roles || {});
  if (!names.length) return '<span class="muted">no reservation</span>';
  return names.map((r) => {
    const c = roles[r];
    const free = { cpus: c.reserved.cpus - c.allocated.cpus, mem: c.reserved.mem_mb - c.allocated.mem_mb };
    return `<div data-role="${esc(r)}"><b>${esc(r)}</b>: ` +
      `<span data-k="allocated-cpus">${num(c.allocated.cpus)}</span> / <span data-k="reserved-cpus">${num(c.reserved.cpus)}</span> CPU, ` +
      `<span data-k="allocated-mem">${num(c.allocated.mem_mb)}</span> / <span data-k="reserved-mem">${num(c.reserved.mem_mb)}</span> MB ` +
      `<span class="muted">(free <span data-k="free-cpus">${num(free.cpus)}</span> CPU, ${num(free.mem)} MB)</span></div>`;
  }).join('');
}

function fleetPage() {
  const ov = S.ov;
  const lost = new Set(ov.lost_nodes);
  const live = new Set(ov.nodes.map((n) => n.node));
  for (const n of Object.keys(S.known)) if (!live.has(n)) lost.add(n);
  let res = 0, alloc = 0;
  for (const n of ov.nodes) for (const r of Object.values(n.roles)) { res += r.reserved.cpus; alloc += r.allocated.cpus; }
  let h = `<h2>Fleet</h2><p><span data-k="node-count">${ov.nodes.length}</span> nodes live` +
    (lost.size ? `, <span class="bad"><span data-k="lost-count">${lost.size}</span> lost</span>` : '') +
    ` · ${num(alloc)} of ${num(res)} reserved CPUs allocated · ${ov.jobs_total} jobs</p>`;
  h += '<p class="legend"><span><i class="sw sw-biz"></i>business CPU</span><span><i class="sw sw-batch"></i>batch CPU</span> (last hour)</p>';
  h += '<div class="wrap"><table id="nodes"><thead><tr><th>Node</th><th>Reserved / allocated per role</th><th>Business vs batch</th><th class="n">Tasks</th><th class="hide-narrow">Attributes</th><th>Last seen</th></tr></thead><tbody>';
  const rows = ov.nodes.slice().sort((a, b) => a.node.localeCompare(b.node));
  for (const n of [...lost].sort()) {
    const k = S.known[n];
    h += `<tr class="lost" data-node="${esc(n)}"><td><b>${esc(n)}</b> <span class="badge b-lost">lost</span></td>` +
      `<td class="muted">info key gone (lease expired)</td><td></td><td class="n"></td><td class="hide-narrow"></td><td>${k ? esc(ago(k.last_seen)) : ''}</td></tr>`;
  }
  for (const n of rows) {
    const ring = ringOf(n.node);
    const attrs = Object.entries(n.attributes || {}).map(([k, v]) => esc(k) + '=' + esc(v)).join(', ');
    h += `<tr data-node="${esc(n.node)}"><td><b>${esc(n.node)}</b><div class="attrs">${esc(n.address)} · ${esc(n.version)}</div></td>` +
      `<td>${roleCells(n.roles)}</td>` +
      `<td>${spark(ring && ring.samples, 120, 28, [{ i: 5, color: COLOR.biz, label: 'business CPU' }, { i: 3, color: COLOR.batch, label: 'batch CPU' }])}</td>` +
      `<td class="n" data-k="tasks">${n.tasks}</td><td class="attrs hide-narrow">${attrs}</td><td>${esc(ago(n.last_seen))}</td></tr>`;
  }
  return h + '</tbody></table></div>';
}

function harvestPage() {
  const nodes = S.ov.nodes.map((n) => n.node).sort();
  const opts = ['<option value="">whole fleet</option>'].concat(nodes.map((n) =>
    `<option value="${esc(n)}"${S.hnode === n ? ' selected' : ''}>${esc(n)}</option>`)).join('');
  const points = S.hnode ? (ringOf(S.hnode) || {}).samples : fleetSeries();
  return `<h2>Harvest</h2><p>What the business used, what the monitor left to gleaner, and what batch used. ` +
    `A dashed red line is a moment the reservation shrank.</p>` +
    `<p><label for="hnode">Show</label> <select id="hnode">${opts}</select> ` +
    `<label for="metric">as</label> <select id="metric"><option value="cpus"${S.metric === 'cpus' ? ' selected' : ''}>CPU</option>` +
    `<option value="mem"${S.metric === 'mem' ? ' selected' : ''}>memory</option></select></p>` +
    (S.harvest ? chart(points, S.metric) : '<p class="muted">Loading…</p>');
}

function queuesPage() {
  const ov = S.ov;
  let h = '<h2>Queues</h2><div class="wrap"><table id="queues"><thead><tr><th>Queue</th><th class="n">Weight</th><th class="n">Pending</th><th class="n">Running</th><th class="n">Share</th><th class="n">Fair share</th><th class="hide-narrow">Share vs fair</th><th class="hide-narrow">Finished</th></tr></thead><tbody>';
  for (const q of ov.queues) {
    const c = ov.job_counts[q.name] || {};
    const w = 90, bar = (v, color, y) => `<rect x="0" y="${y}" width="${Math.min(w, w * v).toFixed(1)}" height="3" fill="${color}"/>`;
    h += `<tr data-queue="${esc(q.name)}"><td>${esc(q.name)}</td><td class="n">${num(1 / q.priority_factor)}</td>` +
      `<td class="n" data-k="pending">${q.pending}</td><td class="n" data-k="running">${q.running}</td>` +
      `<td class="n" data-k="share">${pct(q.share)}</td><td class="n" data-k="fair">${pct(q.fair_share)}</td>` +
      `<td class="hide-narrow"><svg width="${w}" height="8" role="img" aria-label="share ${pct(q.share)} of fair ${pct(q.fair_share)}">${bar(q.share, COLOR.batch, 0)}${bar(q.fair_share, COLOR.res, 5)}</svg></td>` +
      `<td class="hide-narrow muted">${['SUCCEEDED', 'FAILED', 'CANCELLED'].map((s) => (c[s] ? s.toLowerCase() + ' ' + c[s] : '')).filter(Boolean).join(', ')}</td></tr>`;
  }
  h += '</tbody></table></div>';
  const f = S.filter.toLowerCase();
  const jobs = ov.jobs.filter((j) => !f || [j.id, j.queue, j.state, j.node, j.message].some((v) => (v || '').toLowerCase().includes(f)));
  h += `<h2>Jobs</h2><p><label for="filter">Filter</label> <input id="filter" type="search" value="${esc(S.filter)}" placeholder="id, queue, state, node, reason"> ` +
    `<span class="muted">${ov.jobs.length} of ${ov.jobs_total} listed (unfinished first)</span></p>`;
  h += '<div class="wrap"><table id="jobs"><thead><tr><th>Job</th><th>Queue</th><th>State</th><th>Node</th><th class="n">Attempt</th><th>Why / what</th><th class="hide-narrow">Submitted</th></tr></thead><tbody>';
  for (const j of jobs.slice(0, 300)) {
    h += `<tr data-job="${esc(j.id)}"><td><a id="j-${esc(j.id)}" href="#/jobs/${encodeURIComponent(j.id)}">${esc(j.id)}</a></td><td>${esc(j.queue)}</td>` +
      `<td><span class="badge b-${esc(j.state)}" data-k="state">${esc(j.state)}</span></td><td data-k="node">${esc(j.node || '')}</td>` +
      `<td class="n">${j.attempt}</td><td>${esc(j.message || '')}</td><td class="hide-narrow">${esc(ago(j.submitted_at))}</td></tr>`;
  }
  return h + '</tbody></table></div>';
}

function jobPage() {
  const id = S.jobId;
  let h = `<p><a href="#/queues" id="back">← Queues &amp; jobs</a></p><h2>Job ${esc(id)}</h2>`;
  const j = S.job;
  if (!j) return h + '<p class="muted">Loading…</p>';
  const ts = j.task_status || {};
  const ev = [[j.submitted_at, `queued in ${j.queue} (priority ${j.priority})`]];
  if (j.placed_at) ev.push([j.placed_at, `placed on ${j.node || '?'} (attempt ${j.attempt})`]);
  if (ts.started_at) ev.push([ts.started_at, `running on ${ts.node || j.node}`]);
  if (j.finished_at) ev.push([j.finished_at, `${j.state.toLowerCase()}${j.message ? ': ' + j.message : ''}`]);
  if (!j.state.match(/SUCCEEDED|FAILED|CANCELLED/) && j.message) ev.push([null, `now ${j.state}: ${j.message}`]);
  h += `<p><span class="badge b-${esc(j.state)}" id="job-state">${esc(j.state)}</span> on <span id="job-node">${esc(j.node || '–')}</span>, attempt ${j.attempt}, ${j.retries} of ${j.max_retries} retries used</p>`;
  h += '<h3>Timeline</h3><ol class="timeline" id="timeline">';
  for (const [t, what] of ev.sort((a, b) => (a[0] ? Date.parse(a[0]) : Infinity) - (b[0] ? Date.parse(b[0]) : Infinity))) {
    h += `<li>${t ? `<time datetime="${esc(t)}">${esc(time(t))}</time> ` : ''}${esc(what)}</li>`;
  }
  h += '</ol><h3>Seen while this console was open</h3><ol class="timeline" id="seen">';
  for (const s of S.history[id] || []) {
    h += `<li class="seen"><time datetime="${esc(s.t)}">${esc(time(s.t))}</time> ${esc(s.state)}${s.node ? ' on ' + esc(s.node) : ''} (attempt ${s.attempt})${s.message ? ': ' + esc(s.message) : ''}</li>`;
  }
  h += '</ol>';
  const r = j.spec && j.spec.resources;
  if (r) h += `<h3>Asks</h3><p>${num(r.cpus)} CPU, ${num(r.mem_mb)} MB, role ${esc(j.spec.role || '')}${j.gang ? ', gang ' + esc(j.gang.id) + ' of ' + j.gang.cardinality : ''}</p>`;
  return h;
}

function appsPage() {
  let h = '<h2>Apps</h2>';
  if (!S.apps) return h + '<p class="muted">Loading…</p>';
  const deps = S.deps || [];
  h += `<h3>Deployments in progress (${deps.length})</h3>`;
  h += deps.length ? '<ul>' + deps.map((d) => `<li>${esc(d.id)}: ${esc((d.affectedApps || []).join(', '))} step ${esc(d.currentStep)} of ${esc(d.totalSteps)} <span class="muted">${esc(d.version || '')}</span></li>`).join('') + '</ul>' : '<p class="muted">none</p>';
  h += '<div class="wrap"><table id="apps"><thead><tr><th>App</th><th class="n">Instances</th><th class="n">Running</th><th class="n">Staged</th><th class="n">Healthy</th><th class="n">Unhealthy</th><th>Tasks</th></tr></thead><tbody>';
  for (const a of S.apps) {
    const tasks = (a.tasks || []).map((t) => `${esc(t.host)} <span class="muted">${esc((t.state || '').replace('TASK_', '').toLowerCase())}</span>`).join('<br>');
    h += `<tr data-app="${esc(a.id)}"><td>${esc(a.id)}${(a.deployments || []).length ? ' <span class="badge b-PLACED">deploying</span>' : ''}</td>` +
      `<td class="n" data-k="instances">${a.instances}</td><td class="n" data-k="running">${a.tasksRunning}</td><td class="n">${a.tasksStaged}</td>` +
      `<td class="n">${a.tasksHealthy}</td><td class="n">${a.tasksUnhealthy}${a.tasksUnhealthy ? ' <span class="badge b-FAILED">!</span>' : ''}</td><td>${tasks}</td></tr>`;
  }
  return h + '</tbody></table></div>';
}

// ---- render ------------------------------------------------------------------
function render() {
  const { page } = route();
  for (const a of document.querySelectorAll('nav a')) {
    if (a.dataset.page === page || (page === 'jobs' && a.dataset.page === 'queues')) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  $('status').textContent = S.error ? 'error: ' + S.error : S.updated ? 'live · updated ' + S.updated.toLocaleTimeString() : 'loading…';
  $('status').className = S.error ? 'bad' : '';
  if (!S.ov) return;
  const pages = { fleet: fleetPage, harvest: harvestPage, queues: queuesPage, jobs: jobPage, apps: appsPage };
  const html = (pages[page] || fleetPage)();
  if (html === S.lastHtml) return; // nothing changed: keep the DOM (and focus, selection)
  S.lastHtml = html;
  const focused = document.activeElement && document.activeElement.id;
  const caret = focused === 'filter' ? $('filter').selectionStart : null;
  $('page').innerHTML = html;
  if (focused && $(focused)) {
    $(focused).focus();
    if (caret !== null) $(focused).setSelectionRange(caret, caret);
  }
  if (!window.gleanerFirstRender) window.gleanerFirstRender = performance.now(); // bench: time to first render
  document.body.dataset.rendered = String(Date.now()); // for the browser tests
}

document.addEventListener('DOMContentLoaded', () => {
  $('login').addEventListener('submit', (e) => {
    e.preventDefault();
    S.token = $('token').value.trim();
    sessionStorage.setItem(TOKEN_KEY, S.token);
    $('token').value = '';
    start();
  });
  $('logout').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    S.token = null; stopAll(); showLogin('');
  });
  $('page').addEventListener('input', (e) => {
    if (e.target.id === 'filter') { S.filter = e.target.value; render(); }
  });
  $('page').addEventListener('change', (e) => {
    if (e.target.id === 'hnode') { S.hnode = e.target.value; render(); }
    if (e.target.id === 'metric') { S.metric = e.target.value; render(); }
  });
  window.addEventListener('hashchange', () => { start(); $('main').focus(); });
  document.addEventListener('visibilitychange', () => { if (!document.hidden && S.token !== null) start(); });
  // A scheduler without a token accepts any request: try without one first.
  if (S.token === null) {
    api('/ui/api/overview').then(() => { S.token = ''; start(); }).catch(() => showLogin(''));
  } else start();
});
