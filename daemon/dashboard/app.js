/*
 * modelbuf's dashboard: plain JavaScript, no library, served by modelbufd
 * from files compiled into it (docs/DASHBOARD.md).
 *
 * Everything comes from the JSON API: GET /api/models and /api/devices
 * (polled every 2 s, and again soon after each event), the event stream
 * GET /api/events and a worker's log GET /api/models/NAME/logs?follow=1.
 * EventSource cannot send an Authorization header, so both streams are
 * read with fetch() and parsed here (the server-sent events format),
 * resuming after the last id they got (Last-Event-ID) when they reconnect.
 * The memory chart's history is what this page sampled since it opened.
 *
 * Names, reasons, errors and log lines come from models and clients: they
 * are only ever put into the page as text (textContent, text nodes), never
 * as markup.
 */
'use strict';

(() => {
  const KEY_STORE = 'modelbuf.apiKey';
  const POLL_MS = 2000;
  const SAMPLE_MS = 5000;
  const HISTORY_MS = 60 * 60 * 1000;
  const MAX_EVENTS = 300;
  const MAX_LOG_LINES = 2000;
  const SVG_NS = 'http://www.w3.org/2000/svg';

  const $ = (id) => document.getElementById(id);

  /* ---------------------------------------------------------------------- */
  /* Small helpers                                                           */

  /* An element with attributes and children; strings become text nodes. */
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else e.setAttribute(k, v);
    }
    e.append(...children.filter((c) => c !== null && c !== undefined));
    return e;
  }

  /* Replaces node's children with those given, leaving out null ones. */
  function setKids(node, ...children) {
    node.replaceChildren(...children.filter((c) => c !== null && c !== undefined));
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }

  function fmtBytes(n) {
    if (n === null || n === undefined) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    let v = Number(n);
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    return (i === 0 || v >= 100 ? v.toFixed(0) : v.toFixed(1)) + ' ' + units[i];
  }

  function fmtSecs(s) {
    if (s < 0) return 'forever';
    s = Math.round(s);
    if (s < 60) return s + ' s';
    if (s < 3600) return Math.floor(s / 60) + 'm ' + String(s % 60).padStart(2, '0') + 's';
    return Math.floor(s / 3600) + 'h ' + String(Math.floor(s / 60) % 60).padStart(2, '0') + 'm';
  }

  function fmtMs(ms) {
    if (!ms) return '–';
    return ms < 1000 ? ms.toFixed(0) + ' ms' : (ms / 1000).toFixed(2) + ' s';
  }

  function fmtClock(t) {
    const d = new Date(t);
    return isNaN(d) ? '' : d.toLocaleTimeString([], { hour12: false });
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  /* 1 s doubling to 30 s; reset after a success. */
  class Backoff {
    constructor() { this.ms = 0; }
    next() {
      this.ms = this.ms ? Math.min(this.ms * 2, 30000) : 1000;
      return this.ms;
    }
    reset() { this.ms = 0; }
  }

  function toast(text, error) {
    const t = el('div', { class: 'toast' + (error ? ' error' : ''), role: error ? 'alert' : 'status' },
      text);
    $('toasts').append(t);
    setTimeout(() => t.remove(), error ? 10000 : 4000);
  }

  /* ---------------------------------------------------------------------- */
  /* The API, with the key kept for this tab                                 */

  class AuthError extends Error {}
  class Unreachable extends Error {}
  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  const url = (path) => new URL(path, document.baseURI).toString();
  const modelPath = (name, rest) => 'api/models/' + encodeURIComponent(name) + (rest || '');

  function authHeaders(extra) {
    const h = Object.assign({}, extra || {});
    const key = sessionStorage.getItem(KEY_STORE);
    if (key) h.Authorization = 'Bearer ' + key;
    return h;
  }

  let keyWaiters = [];

  /* Asks for the key (once, however many requests were refused). */
  function askKey() {
    const d = $('key-dialog');
    $('key-text').textContent = sessionStorage.getItem(KEY_STORE)
      ? 'modelbufd refused this key. Enter another; it is kept for this tab only.'
      : 'This modelbufd needs an API key. It is kept for this tab only.';
    if (!d.open) {
      d.showModal();
      $('key-input').focus();
    }
  }

  function waitForKey() {
    return new Promise((resolve) => keyWaiters.push(resolve));
  }

  function useKey() {
    const key = $('key-input').value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORE, key);
    $('key-input').value = '';
    $('key-dialog').close();
    $('key-forget').hidden = false;
    const waiters = keyWaiters;
    keyWaiters = [];
    waiters.forEach((w) => w());
  }

  async function api(method, path, body) {
    const opts = { method, headers: authHeaders(), cache: 'no-store' };
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(url(path), opts);
    } catch (e) {
      throw new Unreachable(e.message);
    }
    if (resp.status === 401) {
      askKey();
      throw new AuthError('unauthorized');
    }
    const text = await resp.text();
    let doc = null;
    try {
      doc = text ? JSON.parse(text) : null;
    } catch (e) {
      doc = null;
    }
    if (!resp.ok) {
      const err = doc && doc.error ? doc.error : {};
      throw new ApiError(resp.status, err.code || String(resp.status),
        err.message || resp.statusText || 'HTTP ' + resp.status);
    }
    return { doc, resp };
  }

  /*
   * A server-sent event stream read with fetch(), so that it carries the
   * key: parsed as the HTML standard says (fields id, event, data; comment
   * lines; CR, LF or CRLF line ends), reconnected with back-off, resumed
   * after the last id received.
   */
  class EventStream {
    constructor(path, handlers) {
      this.path = path;
      this.h = handlers;
      this.lastId = null;
      this.stopped = false;
      this.abort = null;
      this.backoff = new Backoff();
    }

    start() {
      this.run();
      return this;
    }

    stop() {
      this.stopped = true;
      if (this.abort) this.abort.abort();
    }

    async run() {
      while (!this.stopped) {
        this.abort = new AbortController();
        try {
          const headers = authHeaders({ Accept: 'text/event-stream' });
          if (this.lastId !== null) headers['Last-Event-ID'] = this.lastId;
          const resp = await fetch(url(this.path), { headers, cache: 'no-store',
            signal: this.abort.signal });
          if (resp.status === 401) {
            askKey();
            if (this.h.onDown) this.h.onDown(null);
            await waitForKey();
            continue;
          }
          if (resp.status === 404) { /* the model is gone (a reload removed it) */
            this.stopped = true;
            if (this.h.onDown) this.h.onDown('gone');
            return;
          }
          if (!resp.ok || !resp.body) throw new Error('HTTP ' + resp.status);
          this.backoff.reset();
          if (this.h.onOpen) this.h.onOpen();
          await this.read(resp.body);
          if (this.h.onDown) this.h.onDown('ended');
        } catch (e) {
          if (this.stopped) return;
          if (this.h.onDown) this.h.onDown(e.message);
        }
        if (this.stopped) return;
        await sleep(this.backoff.next());
      }
    }

    async read(body) {
      const reader = body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      let type = '';
      let data = [];
      let id = null;
      for (;;) {
        const { value, done } = await reader.read();
        if (done || this.stopped) return;
        buf += value;
        for (;;) {
          const m = /\r\n|\r|\n/.exec(buf);
          /* A CR at the very end may be the first half of a CRLF. */
          if (!m || (m[0] === '\r' && m.index === buf.length - 1)) break;
          const line = buf.slice(0, m.index);
          buf = buf.slice(m.index + m[0].length);
          if (line === '') { /* the end of an event */
            if (id !== null) this.lastId = id;
            if (data.length) this.h.onEvent(type || 'message', data.join('\n'), this.lastId);
            type = '';
            data = [];
            id = null;
            continue;
          }
          if (line[0] === ':') continue; /* a comment: keeps the connection open */
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          let v = colon < 0 ? '' : line.slice(colon + 1);
          if (v[0] === ' ') v = v.slice(1);
          if (field === 'data') data.push(v);
          else if (field === 'event') type = v;
          else if (field === 'id' && !v.includes('\0')) id = v;
        }
      }
    }
  }

  /* ---------------------------------------------------------------------- */
  /* What the page knows                                                     */

  const state = {
    models: new Map(),     /* name -> the last status */
    rows: new Map(),       /* name -> the row's elements */
    devices: [],           /* /api/devices: devices */
    hostTier: null,        /* /api/devices: host_tier */
    skewMs: 0,             /* the daemon's clock minus ours, when they differ */
    history: [],           /* [{t, series: {label: {used, limit}}}] */
    logModel: null,
    logStream: null,
  };

  /* ---------------------------------------------------------------------- */
  /* Models                                                                  */

  function deviceNamed(name) {
    return state.devices.find((d) => d.name === name) || null;
  }

  function bar(cls, used, limit, title) {
    const fill = el('span', { class: 'fill' });
    const frac = limit > 0 ? Math.min(1, used / limit) : 0;
    fill.style.width = (frac * 100).toFixed(1) + '%';
    return el('span', { class: 'bar ' + cls, title }, fill);
  }

  function button(text, cls, title, onclick) {
    const b = el('button', { type: 'button', class: cls, title }, text);
    b.addEventListener('click', onclick);
    return b;
  }

  function makeRow(name) {
    const r = {};
    r.tr = el('tr');
    r.tr.dataset.model = name;
    r.name = el('td', { class: 'name' });
    r.state = el('td', { class: 'state-cell' });
    r.where = el('td', { class: 'where' });
    r.memory = el('td', { class: 'memory' });
    r.requests = el('td', { class: 'requests' });
    r.keepAlive = el('td', { class: 'keep-alive' });
    r.times = el('td', { class: 'times' });
    const actions = el('td', { class: 'actions' });
    r.kaInput = el('input', { type: 'text', class: 'ka-input', placeholder: '10m',
      'aria-label': 'keep-alive of ' + name, size: '5' });
    r.kaInput.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') keepAlive(name, r);
    });
    actions.append(
      button('Load', 'act-load', 'load now (or restore from host RAM)',
        (e) => act(name, 'load', { wait: false }, e.currentTarget)),
      button('Offload', 'act-offload', 'move to host RAM',
        (e) => act(name, 'offload', {}, e.currentTarget)),
      button('Unload', 'act-unload danger', 'free it entirely',
        (e) => unload(name, e.currentTarget)),
      el('span', { class: 'ka' }, r.kaInput,
        button('Keep-alive', 'act-keep-alive', 'set its keep-alive: a duration, 0, or -1 (forever)',
          () => keepAlive(name, r))),
      button('Log', 'act-log', 'follow its log below', () => openLog(name, true)));
    r.tr.append(r.name, r.state, r.where, r.memory, r.requests, r.keepAlive, r.times, actions);
    return r;
  }

  function setState(r, st) {
    r.state.replaceChildren(el('span', { class: 'badge state-' + st, text: st }));
  }

  function fillRow(r, m) {
    const aliases = (m.aliases || []).length ? 'also ' + m.aliases.join(', ') : '';
    setKids(r.name, el('strong', { text: m.name }),
      el('div', { class: 'muted small', text: m.backend + (m.pinned ? ' · pinned' : '') }),
      aliases ? el('div', { class: 'muted small', text: aliases }) : null);

    setState(r, m.state);
    if (m.progress && m.progress.total_bytes > 0)
      r.state.append(bar('progress', m.progress.done_bytes, m.progress.total_bytes,
        fmtBytes(m.progress.done_bytes) + ' of ' + fmtBytes(m.progress.total_bytes)));
    if (m.error) r.state.append(el('div', { class: 'error small', text: m.error, title: m.error }));
    for (const w of m.warnings || []) r.state.append(el('span', { class: 'warn', text: w }));
    if (m.last_crash)
      r.state.append(el('div', { class: 'muted small',
        text: 'last loss ' + fmtClock(m.last_crash.time) + ': ' + m.last_crash.reason }));

    setKids(r.where, el('div', { text: m.location }),
      el('div', { class: 'muted small', text: m.device || '' }),
      m.pid ? el('div', { class: 'muted small', text: 'pid ' + m.pid }) : null);

    const dev = m.device ? deviceNamed(m.device) : null;
    const usable = dev ? dev.usable_bytes : 0;
    const hostBudget = state.hostTier ? state.hostTier.budget_bytes : 0;
    setKids(r.memory,
      el('div', { class: 'mem-line' }, el('span', { class: 'tier', text: 'device' }),
        bar('device', m.vram_bytes, usable, usable ? 'of ' + fmtBytes(usable) + ' usable on ' +
          m.device : ''),
        el('span', { class: 'num', text: fmtBytes(m.vram_bytes) })),
      el('div', { class: 'mem-line' }, el('span', { class: 'tier', text: 'host' }),
        bar('host', m.host_bytes, hostBudget, hostBudget ? 'of the host tier\'s ' +
          fmtBytes(hostBudget) : ''),
        el('span', { class: 'num', text: fmtBytes(m.host_bytes) })),
      el('div', { class: 'muted small', text: 'footprint ' + fmtBytes(m.footprint_bytes) }));

    setKids(r.requests, el('span', { class: 'inflight', text: String(m.inflight) }),
      ' in flight', el('br'), el('span', { class: 'queued', text: String(m.queued) }), ' queued',
      el('div', { class: 'muted small', text: (m.stats ? m.stats.requests : 0) + ' served' }));

    const st = m.stats || {};
    setKids(r.times,
      el('div', { text: 'load ' + fmtMs(st.last_load_ms) }),
      el('div', { text: 'restore ' + fmtMs(st.last_restore_ms) }),
      el('div', { class: 'muted small', text: (st.loads || 0) + ' loads · ' + (st.restores || 0) +
        ' restores · ' + (st.evictions || 0) + ' evictions' }));
    tickRow(r, m);
  }

  /* The keep-alive countdown, run every second. */
  function tickRow(r, m) {
    let text;
    let cls = '';
    if (m.timer_active && m.expires_at) {
      const left = (Date.parse(m.expires_at) - (Date.now() + state.skewMs)) / 1000;
      const what = m.state === 'offloaded' ? 'release in ' : 'idle action in ';
      text = what + fmtSecs(Math.max(0, left));
      cls = 'countdown';
    } else if (m.keep_alive_s === -1) {
      text = 'forever';
    } else if (m.inflight > 0) {
      text = 'in use';
    } else {
      text = '–';
    }
    const setting = m.keep_alive_s === -1 ? 'keep-alive forever' : 'keep-alive ' +
      fmtSecs(m.keep_alive_s);
    setKids(r.keepAlive, el('div', { class: cls, text }),
      el('div', { class: 'muted small', text: setting }));
  }

  function renderModels(list) {
    const names = new Set(list.map((m) => m.name));
    for (const [name, r] of state.rows)
      if (!names.has(name)) {
        r.tr.remove();
        state.rows.delete(name);
      }
    const body = $('models-body');
    state.models = new Map(list.map((m) => [m.name, m]));
    list.forEach((m, i) => {
      let r = state.rows.get(m.name);
      if (!r) {
        r = makeRow(m.name);
        state.rows.set(m.name, r);
      }
      if (body.children[i] !== r.tr) body.insertBefore(r.tr, body.children[i] || null);
      fillRow(r, m);
    });
    $('no-models').hidden = list.length > 0;
    fillLogChoices(list);
  }

  /* ---------------------------------------------------------------------- */
  /* Actions                                                                 */

  async function act(name, action, body, btn) {
    if (btn) btn.disabled = true;
    try {
      await api('POST', modelPath(name, '/' + action), body);
      toast(action + ' ' + name + ': ' + (action === 'load' ? 'asked' : 'done'));
    } catch (e) {
      if (!(e instanceof AuthError)) toast(action + ' ' + name + ': ' + e.message, true);
    } finally {
      if (btn) btn.disabled = false;
      pollSoon();
    }
  }

  function confirmDialog(title, text, yes) {
    const d = $('confirm-dialog');
    $('confirm-title').textContent = title;
    $('confirm-text').textContent = text;
    $('confirm-yes').textContent = yes;
    return new Promise((resolve) => {
      const done = (v) => {
        $('confirm-yes').removeEventListener('click', onYes);
        $('confirm-no').removeEventListener('click', onNo);
        d.removeEventListener('cancel', onNo);
        if (d.open) d.close();
        resolve(v);
      };
      const onYes = () => done(true);
      const onNo = (e) => {
        if (e) e.preventDefault();
        done(false);
      };
      $('confirm-yes').addEventListener('click', onYes);
      $('confirm-no').addEventListener('click', onNo);
      d.addEventListener('cancel', onNo);
      d.showModal();
      $('confirm-no').focus();
    });
  }

  async function unload(name, btn) {
    const m = state.models.get(name);
    if (m && (m.inflight > 0 || m.queued > 0)) {
      const ok = await confirmDialog('Unload ' + name + '?',
        name + ' is in use: ' + m.inflight + ' in flight (requests and leases), ' + m.queued +
        ' queued. The unload waits for those in flight to finish, then stops it.', 'Unload');
      if (!ok) return;
    }
    act(name, 'unload', {}, btn);
  }

  function keepAlive(name, r) {
    const v = r.kaInput.value.trim();
    if (!v) {
      toast('keep-alive ' + name + ': give a duration (10m), 0, or -1 (forever)', true);
      return;
    }
    const body = { keep_alive: /^-?\d+(\.\d+)?$/.test(v) ? Number(v) : v };
    r.kaInput.value = '';
    act(name, 'keep-alive', body, null);
  }

  /* ---------------------------------------------------------------------- */
  /* Devices and the chart                                                   */

  function renderDevices() {
    const box = $('devices');
    const cards = state.devices.map((d) => {
      const limit = d.usable_bytes;
      return el('div', { class: 'device' },
        el('div', { class: 'dev-head' }, el('strong', { text: d.name }),
          el('span', { class: 'muted small', text: (d.models || []).length ?
            'resident: ' + d.models.join(', ') : 'nothing resident' })),
        bar('device big', d.used_bytes, limit, ''),
        el('div', { class: 'small', text: fmtBytes(d.used_bytes) + ' used of ' + fmtBytes(limit) +
          ' usable' }),
        el('div', { class: 'muted small', text: 'capacity ' + fmtBytes(d.capacity_bytes) +
          ' · reserve ' + fmtBytes(d.reserve_bytes) + (d.budget_bytes ? ' · budget ' +
          fmtBytes(d.budget_bytes) : '') + ' · ' + d.leases + ' leases · ' + d.loads_in_flight +
          ' loading' }));
    });
    if (state.hostTier) {
      const h = state.hostTier;
      cards.push(el('div', { class: 'device host-tier' },
        el('div', { class: 'dev-head' }, el('strong', { text: 'host tier' }),
          el('span', { class: 'muted small', text: 'offloaded models in host RAM' })),
        bar('host big', h.used_bytes, h.budget_bytes, ''),
        el('div', { class: 'small', text: fmtBytes(h.used_bytes) + ' used of ' +
          fmtBytes(h.budget_bytes) + ' budget' })));
    }
    box.replaceChildren(...cards);
  }

  /* One point of the chart every SAMPLE_MS (polls come more often). */
  function sample() {
    const now = Date.now();
    const last = state.history[state.history.length - 1];
    if (last && now - last.t < SAMPLE_MS - 250) return;
    const series = {};
    for (const d of state.devices) series[d.name] = { used: d.used_bytes, limit: d.usable_bytes };
    if (state.hostTier)
      series['host tier'] = { used: state.hostTier.used_bytes, limit: state.hostTier.budget_bytes };
    state.history.push({ t: now, series });
    while (state.history.length && state.history[0].t < now - HISTORY_MS) state.history.shift();
    if (state.history.length > 4000) state.history.splice(0, state.history.length - 4000);
    drawChart();
  }

  const COLORS = ['#2a6f97', '#c05621', '#2f855a', '#6b46c1', '#b7791f', '#c53030'];

  function drawChart() {
    const W = 640;
    const H = 220;
    const L = 40;
    const R = 10;
    const T = 10;
    const B = 24;
    const now = Date.now();
    /* The last hour, or since the page opened when that is shorter (at
     * least 5 minutes), so that a page just opened shows a line at once. */
    const first = state.history.length ? state.history[0].t : now;
    const span = Math.min(HISTORY_MS, Math.max(5 * 60000, now - first));
    const x = (t) => L + (W - L - R) * (1 - (now - t) / span);
    const y = (f) => T + (H - T - B) * (1 - Math.max(0, Math.min(1, f)));
    const s = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img',
      'aria-label': 'memory per device over the last hour' });
    for (const f of [0, 0.25, 0.5, 0.75, 1]) {
      s.append(svg('line', { x1: L, x2: W - R, y1: y(f), y2: y(f), class: 'grid' }));
      const label = svg('text', { x: L - 4, y: y(f) + 4, class: 'axis', 'text-anchor': 'end' });
      label.textContent = Math.round(f * 100) + '%';
      s.append(label);
    }
    const spanMin = span / 60000;
    const step = [1, 2, 5, 10, 15].find((m) => spanMin / m <= 6) || 15;
    for (let min = 0; min <= spanMin + 1e-9; min += step) {
      const anchor = min === 0 ? 'end' : min + step > spanMin + 1e-9 ? 'start' : 'middle';
      const label = svg('text', { x: x(now - min * 60000), y: H - 6, class: 'axis',
        'text-anchor': anchor });
      label.textContent = min ? '−' + min + ' min' : 'now';
      s.append(label);
    }
    const names = [];
    for (const h of state.history)
      for (const k of Object.keys(h.series)) if (!names.includes(k)) names.push(k);
    const legend = el('div', { class: 'legend' });
    names.forEach((name, i) => {
      const color = COLORS[i % COLORS.length];
      const pts = [];
      for (const h of state.history) {
        const v = h.series[name];
        if (v) pts.push(x(h.t).toFixed(1) + ',' + y(v.limit > 0 ? v.used / v.limit : 0).toFixed(1));
      }
      if (pts.length === 1) pts.push((W - R) + ',' + pts[0].split(',')[1]);
      s.append(svg('polyline', { points: pts.join(' '), fill: 'none', stroke: color,
        'stroke-width': 2, 'data-series': name }));
      const last = state.history[state.history.length - 1].series[name];
      const sw = el('span', { class: 'swatch' });
      sw.style.background = color;
      legend.append(el('span', { class: 'legend-item' }, sw, name + (last ? ' ' +
        fmtBytes(last.used) + ' / ' + fmtBytes(last.limit) : '')));
    });
    $('chart-box').replaceChildren(s, legend);
  }

  /* ---------------------------------------------------------------------- */
  /* Polling                                                                 */

  const pollBackoff = new Backoff();
  let pollTimer = null;
  let polling = false;
  let pollAgain = false;

  function schedulePoll(ms) {
    clearTimeout(pollTimer);
    pollTimer = setTimeout(poll, ms);
  }

  /* Soon after an event or an action: several in a row make one poll. */
  function pollSoon() {
    if (polling) pollAgain = true;
    else schedulePoll(100);
  }

  function banner(text) {
    const b = $('banner');
    b.hidden = !text;
    b.textContent = text || '';
  }

  async function poll() {
    pollTimer = null;
    polling = true;
    let next = POLL_MS;
    try {
      const [models, devices] = await Promise.all([api('GET', 'api/models'),
        api('GET', 'api/devices')]);
      const date = Date.parse(models.resp.headers.get('Date'));
      if (!isNaN(date)) { /* whole seconds: count only a real difference */
        const skew = date + 500 - Date.now();
        state.skewMs = Math.abs(skew) > 2000 ? skew : 0;
      }
      state.devices = devices.doc.devices || [];
      state.hostTier = devices.doc.host_tier || null;
      renderDevices();
      renderModels(models.doc.models || []);
      sample();
      pollBackoff.reset();
      banner('');
    } catch (e) {
      if (e instanceof AuthError) {
        polling = false;
        await waitForKey();
        schedulePoll(0);
        return;
      }
      if (e instanceof Unreachable) {
        next = pollBackoff.next();
        banner('modelbufd is not answering at ' + location.host + ' (' + e.message +
          '); trying again in ' + Math.round(next / 1000) + ' s.');
      } else {
        banner('The daemon answered with an error: ' + e.message);
      }
    } finally {
      polling = false;
    }
    if (pollAgain) {
      pollAgain = false;
      next = Math.min(next, 100);
    }
    schedulePoll(next);
  }

  /* ---------------------------------------------------------------------- */
  /* Events                                                                  */

  function describe(ev) {
    switch (ev.type) {
      case 'state':
        return [ev.from + ' → ' + ev.to, ev.reason];
      case 'evict':
        return ['evicted', ev.reason];
      case 'warning':
        return ['warning: ' + (ev.warning || ''), ev.reason];
      case 'lost':
        return ['lost', ev.reason];
      default:
        return [ev.type || 'event', ev.reason];
    }
  }

  function addEvent(ev, id) {
    const [what, reason] = describe(ev);
    const li = el('li', { class: 'event ev-' + (ev.type || 'other') },
      el('time', { class: 'muted', text: fmtClock(ev.time) }),
      el('span', { class: 'ev-model', text: ev.model || '' }),
      el('span', { class: 'ev-what', text: what }),
      reason ? el('span', { class: 'muted ev-reason', text: '(' + reason + ')' }) : null);
    li.title = ev.last_output || reason || '';
    li.dataset.id = id || '';
    const list = $('events');
    list.prepend(li);
    while (list.children.length > MAX_EVENTS) list.lastChild.remove();
  }

  function onEvent(type, data, id) {
    if (type === 'dropped') {
      let n = '?';
      try {
        n = JSON.parse(data).dropped;
      } catch (e) { /* keep '?' */ }
      addEvent({ type: 'dropped', time: Date.now(), reason: n + ' events missed' }, id);
      pollSoon();
      return;
    }
    let ev;
    try {
      ev = JSON.parse(data);
    } catch (e) {
      return;
    }
    addEvent(ev, id);
    /* The new state at once; the rest of the status comes with the poll. */
    if (ev.type === 'state' && ev.model && state.rows.has(ev.model)) {
      const m = state.models.get(ev.model);
      if (m) m.state = ev.to;
      setState(state.rows.get(ev.model), ev.to);
    }
    pollSoon();
  }

  function setLive(on, why) {
    const l = $('live');
    l.className = 'live ' + (on ? 'on' : 'off');
    l.textContent = on ? 'live' : why === null ? 'waiting for an API key' : 'reconnecting (' + why +
      ')';
  }

  /* ---------------------------------------------------------------------- */
  /* The worker log                                                          */

  function fillLogChoices(list) {
    const sel = $('log-model');
    const have = Array.from(sel.options).map((o) => o.value);
    const want = list.map((m) => m.name);
    if (have.join('\n') !== want.join('\n')) {
      sel.replaceChildren(...want.map((n) => {
        const o = el('option', {}, n);
        o.value = n;
        return o;
      }));
    }
    if (state.logModel !== null && !want.includes(state.logModel)) { /* removed */
      if (state.logStream) state.logStream.stop();
      state.logStream = null;
      state.logModel = null;
      $('log-state').textContent = '';
    }
    if (state.logModel === null && want.length) openLog(want[0], false);
    else if (state.logModel !== null) sel.value = state.logModel;
  }

  function appendLog(type, text) {
    const pre = $('log');
    const follow = $('log-follow').checked;
    const line = el('span', { class: type === 'restart' ? 'log-line restart' : 'log-line' },
      text + '\n');
    pre.append(line);
    while (pre.childNodes.length > MAX_LOG_LINES) pre.firstChild.remove();
    if (follow) pre.scrollTop = pre.scrollHeight;
  }

  function openLog(name, scroll) {
    if (state.logStream) state.logStream.stop();
    state.logModel = name;
    $('log-model').value = name;
    $('log').replaceChildren();
    $('log-state').textContent = 'connecting';
    state.logStream = new EventStream(modelPath(name, '/logs?follow=1&tail=200'), {
      onEvent: (type, data) => appendLog(type, data),
      onOpen: () => {
        $('log-state').textContent = 'following';
      },
      onDown: (why) => {
        $('log-state').textContent = why === null ? 'waiting for an API key' :
          'reconnecting (' + why + ')';
      },
    }).start();
    if (scroll) $('log').scrollIntoView({ block: 'nearest' });
  }

  /* ---------------------------------------------------------------------- */
  /* Start                                                                   */

  function start() {
    $('key-ok').addEventListener('click', useKey);
    $('key-input').addEventListener('keydown', (e) => {
      if (e.key === 'Enter') useKey();
    });
    /* The key dialog stays until a key is given: the page can do nothing
     * without one. */
    $('key-dialog').addEventListener('cancel', (e) => e.preventDefault());
    $('key-forget').hidden = !sessionStorage.getItem(KEY_STORE);
    $('key-forget').addEventListener('click', () => {
      sessionStorage.removeItem(KEY_STORE);
      $('key-forget').hidden = true;
      toast('API key forgotten for this tab');
      pollSoon();
    });
    $('log-model').addEventListener('change', (e) => openLog(e.target.value, false));

    fetch(url('health'), { cache: 'no-store' })
      .then((r) => (r.ok ? r.json() : null))
      .then((h) => {
        if (h && h.version) $('version').textContent = 'modelbufd ' + h.version;
        /* In a fleet, which node this page shows (docs/SCALE-OUT.md). */
        if (h && h.node) {
          $('version').textContent += ' on ' + h.node;
          document.title = 'modelbuf · ' + h.node;
        }
      })
      .catch(() => {});

    new EventStream('api/events', {
      onEvent,
      onOpen: () => {
        setLive(true);
        pollSoon(); /* what changed while the stream was down */
      },
      onDown: (why) => setLive(false, why),
    }).start();

    poll();
    setInterval(() => {
      for (const [name, r] of state.rows) {
        const m = state.models.get(name);
        if (m) tickRow(r, m);
      }
    }, 1000);
  }

  start();
})();
