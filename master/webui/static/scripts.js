// ktstr-ci kernel build pages inside Buildbot's React UI (a www plugin view).
//
// Buildbot's shell loads this file (plugins/ktstr/scripts.js) as a plain script
// and exposes its React, React Router and plugin registry as globals, so the
// view needs no build step. Each route fetches its page from the records
// dashboard (plugins/ktstr/dash/<page>.html, HTML escaped by the server) and
// draws every <canvas data-chart> in it with Chart.js, loaded once from
// plugins/ktstr/chart.umd.min.js.
(function () {
  "use strict";
  var React = window.React;
  var Router = window.ReactRouterDOM;
  var Support = window.BuildbotPluginSupport;
  var h = React.createElement;

  // name, menu caption (null: reached by links only), route, dashboard page
  var PAGES = [
    ["ktstr_overview", "Overview", "/ktstr", "index"],
    ["ktstr_branch", null, "/ktstr/branch", "branch"],
    ["ktstr_trends", "Trends", "/ktstr/trends", "trends"],
    ["ktstr_cache", "Kernel cache", "/ktstr/cache", "cache"],
    ["ktstr_matrix", "Matrix runs", "/ktstr/matrix", "matrix"],
  ];

  function pluginRoot() {
    // The UI's own address rule: the plugins live next to its index page.
    var path = window.location.pathname.replace(/[^/]*$/, "");
    return path + "plugins/ktstr/";
  }

  var chartLoading = null;
  function loadChart() {
    if (window.Chart) {
      return Promise.resolve(window.Chart);
    }
    if (chartLoading === null) {
      chartLoading = new Promise(function (resolve, reject) {
        var s = document.createElement("script");
        s.src = pluginRoot() + "chart.umd.min.js";
        s.onload = function () { resolve(window.Chart); };
        s.onerror = function () {
          chartLoading = null;
          reject(new Error("cannot load " + s.src));
        };
        document.head.appendChild(s);
      });
    }
    return chartLoading;
  }

  function drawCharts(root, charts) {
    var canvases = root.querySelectorAll("canvas[data-chart]");
    if (canvases.length === 0) {
      return Promise.resolve();
    }
    return loadChart().then(function (Chart) {
      canvases.forEach(function (canvas) {
        var spec = JSON.parse(canvas.getAttribute("data-chart"));
        var links = JSON.parse(canvas.getAttribute("data-links") || "[]");
        spec.options = spec.options || {};
        // Each point (or bar) opens its build.
        spec.options.onClick = function (_evt, elements) {
          if (elements.length && links[elements[0].index]) {
            window.location.href = links[elements[0].index];
          }
        };
        spec.options.onHover = function (evt, elements) {
          evt.native.target.style.cursor = elements.length ? "pointer" : "default";
        };
        charts.push(new Chart(canvas, spec));
      });
    });
  }

  function KtstrPage(props) {
    var location = Router.useLocation();
    var ref = React.useRef(null);
    React.useEffect(function () {
      var root = ref.current;
      var charts = [];
      var controller = new AbortController();
      var params = new URLSearchParams(location.search);
      params.set("fragment", "1");
      root.setAttribute("data-ktstr-state", "loading");
      root.textContent = "Loading…";
      fetch(pluginRoot() + "dash/" + props.page + ".html?" + params.toString(), {
        signal: controller.signal,
        credentials: "same-origin",
      })
        .then(function (response) { return response.text(); })
        .then(function (html) {
          root.innerHTML = html;
          return drawCharts(root, charts);
        })
        .then(function () {
          root.setAttribute("data-ktstr-state", "ready");
          root.setAttribute("data-ktstr-charts", String(charts.length));
        })
        .catch(function (err) {
          if (err.name === "AbortError") {
            return;
          }
          root.setAttribute("data-ktstr-state", "error");
          var p = document.createElement("p");
          p.className = "ktstr-error";
          p.textContent = "ktstr-ci: " + err.message;
          root.appendChild(p);
        });
      return function () {
        controller.abort();
        charts.forEach(function (c) { c.destroy(); });
      };
    }, [props.page, location.search]);
    return h("div", { className: "bb-ktstr container", ref: ref, "data-ktstr-page": props.page });
  }

  function Icon() {
    return h(
      "svg",
      { viewBox: "0 0 16 16", width: "1em", height: "1em", fill: "currentColor" },
      h("path", { d: "M1 14h14v1H1zM2 9h2v4H2zM6 5h2v8H6zM10 7h2v6h-2zM13 2h2v11h-2z" })
    );
  }

  Support.buildbotSetupPlugin(function (reg) {
    reg.registerMenuGroup({
      name: "ktstr", caption: "Kernel builds", icon: h(Icon), order: 5, route: null, parentName: null,
    });
    PAGES.forEach(function (p, i) {
      var name = p[0], caption = p[1], route = p[2], page = p[3];
      if (caption !== null) {
        reg.registerMenuGroup({ name: name, parentName: "ktstr", caption: caption, order: i, route: route });
      }
      reg.registerRoute({
        route: route,
        group: caption !== null ? name : "ktstr_overview",
        element: function () { return h(KtstrPage, { page: page }); },
      });
    });
  });
})();
