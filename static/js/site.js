/* Ciyuan Exchange front end: confirmations, the order form's side switch, and charts.
   Charts read their data from <script type="application/json"> blocks that htmx partials
   refresh; nothing here fetches from outside the site. */
(function () {
  "use strict";

  // Forms with data-confirm ask first (cancel an order, revoke a key).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var message = form.getAttribute && form.getAttribute("data-confirm");
    if (message && !window.confirm(message)) {
      event.preventDefault();
      event.stopImmediatePropagation();
    }
  }, true);
  // htmx-driven forms confirm through hx-confirm; nothing else needed here.

  // Copy buttons: data-copy names the element whose text goes to the clipboard.
  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("[data-copy]");
    if (!button || !navigator.clipboard) return;
    var source = document.querySelector(button.getAttribute("data-copy"));
    if (source) navigator.clipboard.writeText(source.textContent).then(function () { button.textContent = "Copied"; });
  });

  // Countdowns (auction gate closure): "1h 02m 05s", refreshed every second from the server's time.
  function tick() {
    document.querySelectorAll("[data-countdown-to]").forEach(function (el) {
      var left = Math.floor((Date.parse(el.getAttribute("data-countdown-to")) - Date.now()) / 1000);
      if (isNaN(left)) return;
      if (left <= 0) { el.textContent = "gate closed, clearing"; return; }
      var h = Math.floor(left / 3600), m = Math.floor((left % 3600) / 60), s = left % 60;
      el.textContent = (h ? h + "h " : "") + (h || m ? String(m).padStart(2, "0") + "m " : "") + String(s).padStart(2, "0") + "s";
    });
  }
  setInterval(tick, 1000);
  document.addEventListener("DOMContentLoaded", tick);

  // Order form: show the hardware field for sells and the allowed-hardware set for buys.
  function syncSide(root) {
    var form = (root || document).querySelector("#order-form");
    if (!form) return;
    var checked = form.querySelector("input[name='side']:checked");
    var side = checked ? checked.value : "buy";
    form.querySelectorAll("[data-side-only]").forEach(function (el) {
      el.hidden = el.getAttribute("data-side-only") !== side;
    });
    var submit = form.querySelector("button[type='submit']");
    if (submit) {
      submit.className = side === "sell" ? "sell" : "buy";
      submit.textContent = side === "sell" ? "Place sell order" : "Place buy order";
    }
  }
  document.addEventListener("change", function (event) {
    if (event.target && event.target.name === "side") syncSide();
  });

  function readJSON(id) {
    var el = document.getElementById(id);
    if (!el) return null;
    try { return JSON.parse(el.textContent); } catch (e) { return null; }
  }

  var charts = {};
  function upsert(key, canvasId, config) {
    var canvas = document.getElementById(canvasId);
    if (!canvas || typeof Chart === "undefined") return;
    var existing = charts[key];
    if (existing && existing.canvas === canvas) {
      existing.data.labels = config.data.labels;
      config.data.datasets.forEach(function (ds, i) {
        if (existing.data.datasets[i]) existing.data.datasets[i].data = ds.data;
      });
      existing.update("none");
      return;
    }
    if (existing) existing.destroy();
    charts[key] = new Chart(canvas, config);
  }

  var baseOptions = {
    responsive: true, maintainAspectRatio: false, animation: false,
    interaction: { mode: "index", intersect: false },
    plugins: { legend: { display: true, position: "bottom", labels: { boxWidth: 12 } } }
  };

  function drawInstrumentCharts() {
    var depth = readJSON("depth-data");
    if (depth) {
      var bidPts = depth.bids.map(function (p) { return { x: p[0], y: p[1] }; });
      var askPts = depth.asks.map(function (p) { return { x: p[0], y: p[1] }; });
      upsert("depth", "depth-chart", {
        type: "line",
        data: { labels: [], datasets: [
          { label: "Bids (cumulative Mtok)", data: bidPts, fill: "origin", borderColor: "#137a3f", backgroundColor: "rgba(19,122,63,.15)", pointRadius: 0 },
          { label: "Asks (cumulative Mtok)", data: askPts, fill: "origin", borderColor: "#b42318", backgroundColor: "rgba(180,35,24,.15)", pointRadius: 0 }
        ] },
        options: Object.assign({}, baseOptions, { parsing: false, scales: {
          x: { type: "linear", title: { display: true, text: "price per Mtok" } },
          y: { beginAtZero: true, title: { display: true, text: "Mtok" } }
        } })
      });
    }
    var candles = readJSON("candles-data");
    var empty = document.getElementById("price-empty");
    if (empty && candles) empty.hidden = candles.labels.length > 0;
    if (candles) drawCandles(candles);
  }

  // The price chart: OHLC candles with volume bars (TradingView lightweight-charts, vendored).
  var candleChart = null;
  function drawCandles(candles) {
    var box = document.getElementById("price-chart");
    if (!box || typeof LightweightCharts === "undefined") return;
    if (!candleChart || candleChart.box !== box) {
      var lw = LightweightCharts;
      var chart = lw.createChart(box, {
        autoSize: true,
        layout: { background: { color: "transparent" }, textColor: "#3b4450" },
        grid: { vertLines: { color: "#eef1f4" }, horzLines: { color: "#eef1f4" } },
        timeScale: { timeVisible: candles.interval !== "1d", secondsVisible: false },
        rightPriceScale: { scaleMargins: { top: 0.1, bottom: 0.25 } }
      });
      var price = chart.addSeries(lw.CandlestickSeries, {
        upColor: "#137a3f", downColor: "#b42318", borderVisible: false,
        wickUpColor: "#137a3f", wickDownColor: "#b42318", priceFormat: { type: "price", precision: 2, minMove: 0.01 }
      });
      var volume = chart.addSeries(lw.HistogramSeries, { priceScaleId: "volume", priceFormat: { type: "volume" }, color: "rgba(91,103,117,.35)" });
      chart.priceScale("volume").applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
      candleChart = { box: box, chart: chart, price: price, volume: volume };
    }
    var t = candles.labels.map(function (l) { return Math.floor(Date.parse(l) / 1000); });
    candleChart.price.setData(t.map(function (time, i) {
      return { time: time, open: Number(candles.open[i]), high: Number(candles.high[i]), low: Number(candles.low[i]), close: Number(candles.close[i]) };
    }));
    candleChart.volume.setData(t.map(function (time, i) {
      var up = Number(candles.close[i]) >= Number(candles.open[i]);
      return { time: time, value: candles.volume[i], color: up ? "rgba(19,122,63,.35)" : "rgba(180,35,24,.35)" };
    }));
    if (candleChart.interval !== candles.interval) {
      candleChart.chart.applyOptions({ timeScale: { timeVisible: candles.interval !== "1d" } });
      candleChart.chart.timeScale().fitContent();
      candleChart.interval = candles.interval;
    }
    box.setAttribute("data-candles", String(t.length));
  }

  function drawSeriesCharts() {
    document.querySelectorAll("canvas[data-series]").forEach(function (canvas) {
      var data = readJSON(canvas.getAttribute("data-series"));
      if (!data) return;
      var kind = canvas.getAttribute("data-kind") || "bar";
      var colors = ["#1f6feb", "#137a3f", "#b42318", "#8a4b00"];
      var sets = (data.datasets || []).map(function (ds, i) {
        var values = ds.data.map(function (v) { return v === null ? null : Number(v); });  // null: a gap
        return { label: ds.label, data: values, spanGaps: true, borderColor: colors[i % 4], backgroundColor: kind === "bar" ? colors[i % 4] : "transparent", pointRadius: kind === "line" ? 2 : 0, tension: 0 };
      });
      var small = canvas.hasAttribute("data-small");
      upsert(canvas.id, canvas.id, {
        type: kind,
        data: { labels: data.labels, datasets: sets },
        options: Object.assign({}, baseOptions, {
          plugins: { legend: { display: !small, position: "bottom", labels: { boxWidth: 12 } } },
          scales: small ? { x: { display: false }, y: { display: false } } : { y: { beginAtZero: kind === "bar" } }
        })
      });
    });
  }

  function refresh(root) {
    syncSide(root);
    drawInstrumentCharts();
    drawSeriesCharts();
  }

  document.addEventListener("DOMContentLoaded", function () { refresh(document); });
  // Live parts arrive out of band (hx-swap-oob); redraw once per response.
  var pending = false;
  function refreshSoon() {
    if (pending) return;
    pending = true;
    window.setTimeout(function () { pending = false; refresh(document); }, 0);
  }
  document.addEventListener("htmx:afterSettle", refreshSoon);
  document.addEventListener("htmx:oobAfterSwap", refreshSoon);
})();

/* The live feed (README "Live feeds"): an element with data-stream-channels subscribes to
   them over /ws/v1/stream and fires "live-refresh" on itself (htmx re-renders the live parts)
   when a message arrives, a few per second at most. While the socket is down it fires every
   data-fallback-poll instead, and reconnects with a growing delay. */
(function () {
  "use strict";
  var el = document.querySelector("[data-stream-channels]");
  if (!el || !window.WebSocket) return;
  var channels = el.getAttribute("data-stream-channels").split(/\s+/).filter(Boolean);
  var pollMs = (parseFloat(el.getAttribute("data-fallback-poll")) || 2) * 1000;
  var poller = null, socket = null, delay = 500, queued = false;
  var lastSeq = {};

  function fire() {
    if (queued) return;
    queued = true;
    window.setTimeout(function () { queued = false; el.dispatchEvent(new Event("live-refresh")); }, 200);
  }
  function startPolling() { if (!poller) poller = window.setInterval(fire, pollMs); }
  function stopPolling() { if (poller) { window.clearInterval(poller); poller = null; } }

  function connect() {
    var url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/v1/stream";
    try { socket = new WebSocket(url); } catch (e) { startPolling(); return; }
    socket.onopen = function () {
      delay = 500;
      channels.forEach(function (c) { socket.send(JSON.stringify({op: "subscribe", channel: c})); });
    };
    socket.onmessage = function (event) {
      var msg = JSON.parse(event.data);
      if (!msg.channel) return;
      if (msg.type === "snapshot") {
        lastSeq[msg.channel] = msg.seq;
        stopPolling();  // the feed is live: no timer
        el.setAttribute("data-stream-state", "live");
        fire();  // catch up on whatever changed while it was down
        return;
      }
      if (lastSeq[msg.channel] !== undefined && msg.seq !== lastSeq[msg.channel] + 1) {
        // A gap: re-subscribe for a fresh snapshot.
        socket.send(JSON.stringify({op: "subscribe", channel: msg.channel}));
      }
      lastSeq[msg.channel] = msg.seq;
      fire();
    };
    socket.onclose = function () {
      el.setAttribute("data-stream-state", "polling");
      startPolling();
      window.setTimeout(connect, delay);
      delay = Math.min(delay * 2, 30000);
    };
  }
  startPolling();
  el.setAttribute("data-stream-state", "polling");
  connect();
})();
