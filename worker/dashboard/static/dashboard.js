/* emotion-stream live dashboard: plain JS, no build step, no external URLs.
 *
 * Data: GET api/state (full snapshot) and the server-sent events at "events"
 * (aggregate / result / rate). All URLs are relative so the page also works
 * behind a path prefix. Every data change increments document.body.dataset.updates;
 * document.body.dataset.ready becomes "true" once the first snapshot is applied and
 * the chart drawn (both are hooks for headless-browser tests).
 *
 * The emotion mix and the chart count only the posts the model could read and was confident
 * about (an aggregate's `counts`); the unsure, other-language and no-text posts are counted
 * apart (its `unsure`, `other_language`, `no_text`), and a recent result that is one of them
 * (its `set_apart`, from the server) is marked in the table.
 */
(function () {
  "use strict";

  var DEFAULT_LABELS = ["sadness", "joy", "love", "anger", "fear", "surprise"];
  // Colour-blind-friendly (after Okabe & Ito): distinct in hue and in lightness.
  var COLORS = {
    sadness: "#2f6fb5",
    joy: "#f0b41c",
    love: "#e07bb0",
    anger: "#d43d2a",
    fear: "#7c55b0",
    surprise: "#1a9c85",
  };
  var FALLBACK_COLORS = ["#56b4e9", "#999999", "#8c6d31", "#3b3b3b"];
  // What a post counts as instead of an emotion: its aggregate field / result's set_apart.
  var APART = [
    { kind: "unsure", name: "unsure", means: "top score under the confidence threshold" },
    { kind: "other_language", name: "other language", means: "not a language the model reads" },
    { kind: "no_text", name: "no text", means: "only links, mentions, hashtags, emoji or numbers" },
  ];
  var HOUR_S = 3600;
  var MAX_ROWS = 20;

  var body = document.body;
  var els = {
    status: document.getElementById("status"),
    rate: document.getElementById("rate"),
    dlqRate: document.getElementById("dlq-rate"),
    postsHour: document.getElementById("posts-hour"),
    dlqHour: document.getElementById("dlq-hour"),
    mix: document.getElementById("mix"),
    apart: document.getElementById("apart"),
    apartNote: document.getElementById("apart-note"),
    chart: document.getElementById("chart"),
    chartEmpty: document.getElementById("chart-empty"),
    windowLabel: document.getElementById("window-label"),
    table: document.getElementById("recent"),
  };
  els.thead = els.table.tHead;
  els.tbody = els.table.tBodies[0];

  var state = {
    labels: DEFAULT_LABELS.slice(),
    windowS: 60,
    windows: [], // AGG objects sorted by window_start, each with a cached `_t` (epoch seconds)
    rate: null,
    showText: false,
  };

  var chart = null;
  var chartLabels = null;
  var raw = []; // raw[labelIdx][pointIdx]: un-stacked counts behind the chart
  var rawApart = []; // rawApart[pointIdx]: posts set apart in that window (not charted)
  var applied = false; // first snapshot applied
  var syncing = false; // a snapshot fetch is in flight: events are buffered meanwhile
  var syncSeq = 0;
  var buffered = [];
  var updates = 0;

  // ---------------------------------------------------------------- helpers

  function colorOf(label, i) {
    return COLORS[label] || FALLBACK_COLORS[i % FALLBACK_COLORS.length];
  }

  function withAlpha(hex, alpha) {
    var n = parseInt(hex.slice(1), 16);
    return "rgba(" + (n >> 16) + "," + ((n >> 8) & 255) + "," + (n & 255) + "," + alpha + ")";
  }

  function toSeconds(iso) {
    var ms = Date.parse(iso);
    return isNaN(ms) ? NaN : ms / 1000;
  }

  function num(v) {
    v = Number(v);
    return isFinite(v) ? v : 0;
  }

  function setNumber(el, value, text) {
    el.textContent = text;
    el.dataset.value = String(value);
  }

  function pad2(n) {
    return n < 10 ? "0" + n : String(n);
  }

  function hhmm(epochS) {
    var d = new Date(epochS * 1000);
    return pad2(d.getHours()) + ":" + pad2(d.getMinutes());
  }

  function bump() {
    updates += 1;
    body.dataset.updates = String(updates);
  }

  function setStatus(kind) {
    els.status.dataset.state = kind;
    els.status.textContent = kind;
  }

  function el(tag, className, text) {
    var e = document.createElement(tag);
    if (className) e.className = className;
    if (text != null) e.textContent = text;
    return e;
  }

  function apartOf(kind) {
    for (var i = 0; i < APART.length; i++) if (APART[i].kind === kind) return APART[i];
    return null;
  }

  function apartTotal(agg) {
    return APART.reduce(function (sum, a) {
      return sum + num(agg[a.kind]);
    }, 0);
  }

  // ---------------------------------------------------------------- windows

  function newer(a, b) {
    // true when aggregate a is at least as recent as b (by updated_at, when both have one)
    var ta = toSeconds(a.updated_at);
    var tb = toSeconds(b.updated_at);
    return isNaN(ta) || isNaN(tb) || ta >= tb;
  }

  function trimWindows() {
    var w = state.windows;
    if (!w.length) return;
    var cutoff = w[w.length - 1]._t - HOUR_S;
    var i = 0;
    while (i < w.length && w[i]._t < cutoff) i++;
    if (i) w.splice(0, i);
  }

  function upsertWindow(agg) {
    var t = toSeconds(agg.window_start);
    if (isNaN(t)) return false;
    agg._t = t;
    var w = state.windows;
    var lo = 0;
    var hi = w.length;
    while (lo < hi) {
      var mid = (lo + hi) >> 1;
      if (w[mid]._t < t) lo = mid + 1;
      else hi = mid;
    }
    if (lo < w.length && w[lo]._t === t) {
      if (!newer(agg, w[lo])) return false;
      w[lo] = agg;
    } else {
      w.splice(lo, 0, agg);
    }
    trimWindows();
    return true;
  }

  function setWindows(list) {
    state.windows = [];
    (list || []).forEach(function (agg) {
      var t = toSeconds(agg && agg.window_start);
      if (isNaN(t)) return;
      agg._t = t;
      state.windows.push(agg);
    });
    state.windows.sort(function (a, b) {
      return a._t - b._t;
    });
    trimWindows();
  }

  // ---------------------------------------------------------------- totals + mix

  function buildMix() {
    els.mix.textContent = "";
    state.labels.forEach(function (label, i) {
      var span = el("span", "mix-item");
      span.dataset.label = label;
      span.style.setProperty("--c", colorOf(label, i));
      span.appendChild(document.createTextNode(label + " "));
      span.appendChild(el("b", "count", "0"));
      span.appendChild(document.createTextNode(" "));
      span.appendChild(el("i", "share", "0%"));
      els.mix.appendChild(span);
    });
  }

  function buildApart() {
    els.apart.textContent = "";
    APART.forEach(function (a) {
      var span = el("span", "apart-item");
      span.dataset.kind = a.kind;
      span.title = a.name + ": " + a.means;
      span.appendChild(document.createTextNode(a.name + " "));
      span.appendChild(el("b", "count", "0"));
      els.apart.appendChild(span);
    });
    els.apartNote.textContent =
      "Set apart, not in the mix — " +
      APART.map(function (a) {
        return a.name + ": " + a.means;
      }).join(" · ");
  }

  function renderTotals() {
    var posts = 0;
    var dead = 0;
    var counts = state.labels.map(function () {
      return 0;
    });
    var apart = APART.map(function () {
      return 0;
    });
    state.windows.forEach(function (w) {
      posts += num(w.posts) + apartTotal(w);
      dead += num(w.dead_letters);
      var c = w.counts || {};
      state.labels.forEach(function (label, i) {
        counts[i] += num(c[label]);
      });
      APART.forEach(function (a, i) {
        apart[i] += num(w[a.kind]);
      });
    });
    setNumber(els.postsHour, posts, String(posts));
    Array.prototype.forEach.call(els.apart.children, function (item, i) {
      var count = item.querySelector(".count");
      setNumber(count, apart[i], String(apart[i]));
    });
    setNumber(els.dlqHour, dead, String(dead));
    els.dlqHour.classList.toggle("warn", dead > 0);

    var total = counts.reduce(function (a, b) {
      return a + b;
    }, 0);
    var items = els.mix.children;
    state.labels.forEach(function (label, i) {
      var item = items[i];
      if (!item) return;
      var share = total ? Math.round((counts[i] / total) * 100) : 0;
      item.querySelector(".count").textContent = String(counts[i]);
      item.querySelector(".share").textContent = share + "%";
    });
  }

  function renderRate() {
    var r = state.rate;
    if (!r) return;
    var pps = num(r.posts_per_s);
    var dps = num(r.dead_letters_per_s);
    setNumber(els.rate, pps, pps.toFixed(1));
    setNumber(els.dlqRate, dps, dps.toFixed(2));
    els.dlqRate.classList.toggle("warn", dps > 0);
  }

  // ---------------------------------------------------------------- chart

  function chartData() {
    var ws = state.windowS > 0 ? state.windowS : 60;
    var w = state.windows;
    var newest = w.length ? w[w.length - 1]._t : Math.floor(Date.now() / 1000 / ws) * ws;
    // A regular grid over the last hour (missing windows count as zero), plus any
    // off-grid window the server sent.
    var byT = {};
    w.forEach(function (agg) {
      byT[agg._t] = agg;
    });
    var xs = [];
    for (var t = newest; t > newest - HOUR_S; t -= ws) xs.push(t);
    w.forEach(function (agg) {
      if (xs.indexOf(agg._t) < 0) xs.push(agg._t);
    });
    xs.sort(function (a, b) {
      return a - b;
    });

    var labels = state.labels;
    raw = labels.map(function (label) {
      return xs.map(function (x) {
        var agg = byT[x];
        return agg && agg.counts ? num(agg.counts[label]) : 0;
      });
    });
    rawApart = xs.map(function (x) {
      return byT[x] ? apartTotal(byT[x]) : 0;
    });
    var acc = xs.map(function () {
      return 0;
    });
    var stacked = raw.map(function (series) {
      return series.map(function (v, i) {
        acc[i] += v;
        return acc[i];
      });
    });
    return [xs].concat(stacked);
  }

  function chartSize() {
    var width = Math.max(els.chart.clientWidth, 200);
    var height = Math.round(Math.min(380, Math.max(220, width * 0.36)));
    return { width: width, height: height };
  }

  function tooltipPlugin() {
    var tip;
    function hide() {
      tip.style.display = "none";
    }
    return {
      hooks: {
        init: function (u) {
          tip = el("div", "chart-tip");
          tip.style.display = "none";
          u.over.appendChild(tip);
          u.over.addEventListener("mouseleave", hide);
        },
        setCursor: function (u) {
          var idx = u.cursor.idx;
          if (idx == null || u.cursor.left == null || u.cursor.left < 0) {
            hide();
            return;
          }
          var x = u.data[0][idx];
          var ws = state.windowS > 0 ? state.windowS : 60;
          tip.textContent = "";
          tip.appendChild(el("div", "tip-head", hhmm(x) + "–" + hhmm(x + ws)));
          var total = 0;
          // top of the stack first, like the chart
          for (var i = chartLabels.length - 1; i >= 0; i--) {
            var v = raw[i] ? raw[i][idx] : 0;
            total += v;
            var row = el("div", "tip-row");
            var sw = el("span", "tip-swatch");
            sw.style.background = colorOf(chartLabels[i], i);
            row.appendChild(sw);
            row.appendChild(el("span", "tip-label", chartLabels[i]));
            row.appendChild(el("span", "tip-val", String(v)));
            tip.appendChild(row);
          }
          var tot = el("div", "tip-row tip-total");
          tot.appendChild(el("span", "tip-swatch"));
          tot.appendChild(el("span", "tip-label", "total"));
          tot.appendChild(el("span", "tip-val", String(total)));
          tip.appendChild(tot);
          var apartRow = el("div", "tip-row tip-apart");
          apartRow.appendChild(el("span", "tip-swatch"));
          apartRow.appendChild(el("span", "tip-label", "set apart"));
          apartRow.appendChild(el("span", "tip-val", String(rawApart[idx] || 0)));
          tip.appendChild(apartRow);

          tip.style.display = "block";
          var left = u.cursor.left;
          var tw = tip.offsetWidth;
          var th = tip.offsetHeight;
          var ow = u.over.clientWidth;
          var oh = u.over.clientHeight;
          var lx = left + 14;
          if (lx + tw > ow) lx = left - tw - 14;
          tip.style.left = Math.max(0, lx) + "px";
          tip.style.top = Math.max(0, Math.min(oh - th, (u.cursor.top || 0) - th / 2)) + "px";
        },
      },
    };
  }

  function createChart(data) {
    if (chart) {
      chart.destroy();
      chart = null;
    }
    chartLabels = state.labels.slice();
    var size = chartSize();
    var axisFont = "12px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
    var series = [{}].concat(
      chartLabels.map(function (label, i) {
        var c = colorOf(label, i);
        return {
          label: label,
          stroke: c,
          width: 1.5,
          fill: withAlpha(c, 0.78),
          points: { show: false },
          // legend / cursor values: the real count, not the cumulative one
          value: function (u, v, si, idx) {
            return idx == null || !raw[si - 1] ? "–" : String(raw[si - 1][idx]);
          },
        };
      })
    );
    // Each series fills down to the one below it (bands [upper, lower]); the first fills to 0.
    var bands = [];
    for (var i = 2; i <= chartLabels.length; i++) bands.push({ series: [i, i - 1] });

    var opts = {
      width: size.width,
      height: size.height,
      series: series,
      bands: bands,
      legend: { show: false },
      cursor: {
        y: false,
        points: { show: false },
        drag: { x: false, y: false, setScale: false },
      },
      scales: {
        x: { time: true },
        y: {
          range: function (u, min, max) {
            var top = max > 0 ? uPlot.rangeNum(0, max, 0.1, true)[1] : 10;
            return [0, top];
          },
        },
      },
      axes: [
        {
          stroke: "#5b6475",
          font: axisFont,
          grid: { show: false },
          values: function (u, splits) {
            return splits.map(hhmm);
          },
          ticks: { stroke: "#d5dae2", size: 4 },
        },
        {
          stroke: "#5b6475",
          font: axisFont,
          size: 48,
          grid: { stroke: "#e9ecf1", width: 1 },
          ticks: { show: false },
          incrs: [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000, 20000, 50000, 1e5, 2e5, 5e5, 1e6],
        },
      ],
      hooks: {
        draw: [
          function () {
            if (applied && body.dataset.ready !== "true") body.dataset.ready = "true";
          },
        ],
      },
      plugins: [tooltipPlugin()],
    };
    chart = new uPlot(opts, data, els.chart);
  }

  function renderChart() {
    var data = chartData();
    var sameLabels =
      chartLabels && chartLabels.length === state.labels.length && chartLabels.every(function (l, i) {
        return l === state.labels[i];
      });
    if (!chart || !sameLabels) createChart(data);
    else chart.setData(data, true);
    els.chartEmpty.hidden = state.windows.length > 0;
    els.windowLabel.textContent = state.windowS === 60 ? "minute" : state.windowS + " s window";
  }

  function watchSize() {
    var last = 0;
    function resize() {
      if (!chart) return;
      var size = chartSize();
      if (size.width === last) return;
      last = size.width;
      chart.setSize(size);
    }
    if (window.ResizeObserver) new ResizeObserver(resize).observe(els.chart);
    window.addEventListener("resize", resize);
  }

  // ---------------------------------------------------------------- recent results

  function renderHead() {
    var row = els.thead.rows[0];
    var hasText = row.cells.length > 3;
    if (state.showText && !hasText) {
      var th = el("th", "text", "text");
      th.scope = "col";
      row.appendChild(th);
    } else if (!state.showText && hasText) {
      while (row.cells.length > 3) row.deleteCell(-1);
    }
    els.table.classList.toggle("with-text", state.showText);
  }

  function resultRow(res) {
    var tr = document.createElement("tr");
    var id = String(res.id == null ? "" : res.id);
    tr.dataset.id = id;
    if (res.processed_at) tr.title = "processed " + res.processed_at;

    var tdId = el("td", "id", id);
    tdId.title = id;
    tr.appendChild(tdId);

    var label = String(res.label == null ? "" : res.label);
    var tdLabel = el("td", "label");
    var pill = el("span", "pill", label);
    pill.dataset.label = label;
    var li = state.labels.indexOf(label);
    pill.style.setProperty("--c", colorOf(label, li < 0 ? 0 : li));
    tdLabel.appendChild(pill);
    var apart = apartOf(res.set_apart);
    if (apart) {
      // Labelled, but not counted in the mix: say why, muted.
      tr.dataset.apart = apart.kind;
      var lang = apart.kind === "other_language" && res.language ? " (" + String(res.language) + ")" : "";
      var tag = el("span", "apart-tag", apart.name + lang);
      tag.title = "Set apart from the mix: " + apart.means;
      tdLabel.appendChild(tag);
    }
    tr.appendChild(tdLabel);

    var score = Math.max(0, Math.min(1, num(res.score)));
    var tdScore = el("td", "score", Math.round(score * 100) + "%");
    tdScore.dataset.value = String(res.score);
    tdScore.style.setProperty("--p", Math.round(score * 100) + "%");
    tr.appendChild(tdScore);

    if (state.showText) {
      var text = res.text == null ? "" : String(res.text);
      var tdText = el("td", "text", text);
      tdText.title = text;
      tr.appendChild(tdText);
    }
    return tr;
  }

  function renderRecent(list) {
    renderHead();
    var frag = document.createDocumentFragment();
    (list || []).slice(0, MAX_ROWS).forEach(function (res) {
      if (res) frag.appendChild(resultRow(res));
    });
    els.tbody.textContent = "";
    els.tbody.appendChild(frag);
  }

  function prependResult(res) {
    var id = String(res.id == null ? "" : res.id);
    Array.prototype.slice.call(els.tbody.rows).forEach(function (tr) {
      if (tr.dataset.id === id) tr.remove();
    });
    var tr = resultRow(res);
    tr.className = "fresh";
    els.tbody.insertBefore(tr, els.tbody.firstChild);
    while (els.tbody.rows.length > MAX_ROWS) els.tbody.deleteRow(-1);
  }

  // ---------------------------------------------------------------- snapshot + events

  function applyState(s) {
    if (Array.isArray(s.labels) && s.labels.length) state.labels = s.labels.map(String);
    if (num(s.window_s) > 0) state.windowS = num(s.window_s);
    state.showText = !!s.show_text;
    if (s.rate) state.rate = s.rate;
    if (!els.mix.children.length || els.mix.children.length !== state.labels.length) buildMix();
    else {
      var same = state.labels.every(function (l, i) {
        return els.mix.children[i].dataset.label === l;
      });
      if (!same) buildMix();
    }
    setWindows(s.windows);
    renderTotals();
    renderRate();
    renderRecent(s.recent);
    applied = true;
    renderChart();
    bump();
  }

  function applyEvent(kind, msg) {
    if (!msg || typeof msg !== "object") return;
    if (kind === "aggregate") {
      if (!upsertWindow(msg)) return;
      renderTotals();
      renderChart();
    } else if (kind === "result") {
      prependResult(msg);
    } else if (kind === "rate") {
      state.rate = msg;
      renderRate();
    } else {
      return;
    }
    bump();
  }

  function onEvent(kind) {
    return function (ev) {
      var msg;
      try {
        msg = JSON.parse(ev.data);
      } catch (e) {
        return;
      }
      if (syncing) buffered.push([kind, msg]);
      else applyEvent(kind, msg);
    };
  }

  function resync() {
    var seq = ++syncSeq;
    syncing = true;
    buffered = [];
    return fetch("api/state", { cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (!r.ok) throw new Error("api/state: HTTP " + r.status);
        return r.json();
      })
      .then(function (s) {
        if (seq !== syncSeq) return;
        applyState(s);
      })
      .catch(function (err) {
        if (seq !== syncSeq) return;
        if (window.console) console.warn("dashboard: resync failed", err);
        if (!applied) setTimeout(resync, 3000);
      })
      .then(function () {
        if (seq !== syncSeq) return;
        syncing = false;
        var pending = buffered;
        buffered = [];
        pending.forEach(function (p) {
          applyEvent(p[0], p[1]);
        });
      });
  }

  var source = null;
  var retryMs = 1000;
  var statusTimer = null;

  function clearStatusTimer() {
    if (statusTimer) clearTimeout(statusTimer);
    statusTimer = null;
  }

  function connect() {
    if (!window.EventSource) {
      setStatus("polling");
      setInterval(resync, 5000);
      return;
    }
    source = new EventSource("events");
    source.onopen = function () {
      retryMs = 1000;
      clearStatusTimer();
      setStatus("live");
      resync();
    };
    source.onerror = function () {
      if (source.readyState === 2 || els.status.dataset.state !== "live") {
        clearStatusTimer();
        setStatus("reconnecting");
      } else if (!statusTimer) {
        // The browser is reconnecting by itself: only show it if that takes a moment,
        // so a server that recycles the stream does not make the dot flicker.
        statusTimer = setTimeout(function () {
          statusTimer = null;
          setStatus("reconnecting");
        }, 1500);
      }
      if (source.readyState === 2) {
        // CLOSED: the browser gave up (e.g. an HTTP error); retry ourselves.
        source.close();
        setTimeout(connect, retryMs);
        retryMs = Math.min(retryMs * 2, 15000);
      }
    };
    ["aggregate", "result", "rate"].forEach(function (kind) {
      source.addEventListener(kind, onEvent(kind));
    });
  }

  buildMix();
  buildApart();
  watchSize();
  setStatus("connecting");
  resync();
  connect();
})();
