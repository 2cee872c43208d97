// The Tripwire console: reads and acts through the admin API with the viewer's token.
// Data is only ever set as text (textContent), never as markup.
"use strict";

(function () {
  const API = "/tripwire/v1";
  const TOKEN_KEY = "tripwire.token";
  const POLL_MS = 2000;
  const SLOW_EVERY = 5;
  const Charts = window.TripwireCharts;

  const state = {
    me: null,
    filters: { state: "all", tenant: "", agent: "", sort: "spend" },
    timer: null,
    generation: 0,
  };

  // -- DOM helpers ------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "onclick") node.addEventListener("click", value);
      else if (key === "onchange") node.addEventListener("change", value);
      else if (key === "oninput") node.addEventListener("input", value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const $ = (id) => document.getElementById(id);

  function money(value) {
    if (value === null || value === undefined) return "-";
    if (value === 0) return "$0";
    if (Math.abs(value) < 0.01) return "$" + value.toPrecision(2);
    return "$" + value.toFixed(2);
  }

  const count = (value) => (value === null || value === undefined ? "-" : value.toLocaleString());

  function duration(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
    return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  }

  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  const clock = (at) => new Date(at * 1000).toLocaleTimeString();
  const taskLink = (id) => "#/task/" + encodeURIComponent(id);

  // -- the API ----------------------------------------------------------------------------

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json", Authorization: "Bearer " + token() };
    const options = { method, headers, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(API + path, options);
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const error = (data && data.error) || {};
      throw new ApiError(response.status, error.code || "http_error",
        error.message || `HTTP ${response.status}`);
    }
    return data;
  }

  const taskPath = (id, action) =>
    "/tasks/" + encodeURIComponent(id) + (action ? "/" + action : "");

  // -- sign-in ----------------------------------------------------------------------------

  function takeTokenFromLink() {
    // `tripwire console` puts the local admin token in the fragment, which the browser never
    // sends; keep it for this tab and take it out of the address bar and history.
    const match = location.hash.match(/^#token=([A-Za-z0-9_.~-]+)$/);
    if (match) {
      sessionStorage.setItem(TOKEN_KEY, match[1]);
      history.replaceState(null, "", location.pathname + location.search + "#/");
    }
  }

  function showSignIn(why) {
    $("signin").hidden = false;
    $("signin-why").textContent = why || "";
    $("view").replaceChildren();
    $("who").textContent = "";
    $("sign-out").hidden = true;
    stopPolling();
  }

  async function signIn() {
    try {
      state.me = await api("GET", "/me");
    } catch (error) {
      state.me = null;
      if (error.status === 401 || error.status === 403) {
        showSignIn(token() ? `This token was refused: ${error.message}` : "");
        return false;
      }
      showError(error);
      return false;
    }
    $("signin").hidden = true;
    const me = state.me;
    $("who").textContent = `${me.actor}${me.tenant ? " @" + me.tenant : ""} · ${
      me.may_act ? "admin" : "viewer (read-only)"}`;
    $("sign-out").hidden = false;
    return true;
  }

  function showError(error) {
    const box = $("error");
    if (!error) {
      box.hidden = true;
      box.textContent = "";
      return;
    }
    box.hidden = false;
    box.textContent = error.message || String(error);
  }

  // -- polling ----------------------------------------------------------------------------

  function stopPolling() {
    if (state.timer) clearTimeout(state.timer);
    state.timer = null;
  }

  function poll(render) {
    stopPolling();
    const generation = ++state.generation;
    const tick = async () => {
      try {
        await render(generation);
        showError(null);
        $("updated").textContent = "updated " + new Date().toLocaleTimeString();
      } catch (error) {
        if (error.status === 401) {
          showSignIn(`Signed out: ${error.message}`);
          return;
        }
        showError(error);
      }
      if (generation === state.generation) state.timer = setTimeout(tick, POLL_MS);
    };
    tick();
  }

  // -- tasks ------------------------------------------------------------------------------

  function serverNow(task) {
    return task.started ? task.started + task.age_s : task.last_seen;
  }

  function stateOf(task) {
    if (task.state === "killed") return "killed";
    return serverNow(task) - task.last_seen > state.me.idle_after_s ? "idle" : "running";
  }

  function deadlineLeft(task) {
    if (task.deadline === null || task.deadline === undefined) return "-";
    const left = task.deadline - serverNow(task);
    return left > 0 ? duration(left) : "passed";
  }

  const ofLimit = (value, limit, format) =>
    limit === null || limit === undefined ? format(value) : `${format(value)} / ${format(limit)}`;

  function filterBar(onChange) {
    const f = state.filters;
    const select = (name, options) =>
      el("select", { id: "filter-" + name, onchange: (e) => { f[name] = e.target.value; onChange(); } },
        options.map(([value, label]) => el("option", { value, selected: f[name] === value }, label)));
    const text = (name, placeholder) => {
      const input = el("input", { id: "filter-" + name, placeholder, value: f[name], size: 12 });
      input.addEventListener("change", (e) => { f[name] = e.target.value.trim(); onChange(); });
      return input;
    };
    return el("div", { class: "row filters" },
      el("label", {}, "State ", select("state",
        [["all", "all"], ["running", "running"], ["idle", "idle"], ["killed", "killed"]])),
      el("label", {}, "Tenant ", text("tenant", "any")),
      el("label", {}, "Agent ", text("agent", "any")),
      el("label", {}, "Sort by ", select("sort",
        [["spend", "spend"], ["recent", "recency"], ["calls", "calls"]])));
  }

  function taskRow(task) {
    const status = stateOf(task);
    return el("tr", { dataset: { task: task.task, state: status } },
      el("td", {}, el("a", { href: taskLink(task.task), class: "task-id" }, task.task)),
      el("td", {}, el("span", { class: "badge " + status }, status)),
      el("td", {}, task.tenant || "-"),
      el("td", {}, task.agents.join(", ") || "-"),
      el("td", { class: "num" }, ofLimit(task.tokens_used, task.max_tokens, count)),
      el("td", { class: "num" }, ofLimit(task.cost_usd, task.max_cost_usd, money)),
      el("td", { class: "num" }, ofLimit(task.calls, task.max_calls, count)),
      el("td", { class: "num" }, ofLimit(task.hops, task.max_hops, count)),
      el("td", { class: "num" }, task.state === "killed" ? "-" : deadlineLeft(task)),
      el("td", { class: "trip-reason" }, task.trip ? task.trip.reason : ""),
      el("td", { class: "num refused" }, task.refused_calls ? count(task.refused_calls) : ""));
  }

  async function fetchTasks() {
    const f = state.filters;
    const params = new URLSearchParams({ sort: f.sort, limit: "500" });
    if (f.state === "killed") params.set("state", "killed");
    else if (f.state !== "all") params.set("state", "active");
    if (f.tenant) params.set("tenant", f.tenant);
    if (f.agent) params.set("agent", f.agent);
    const page = await api("GET", "/tasks?" + params.toString());
    return page.tasks.filter((t) => f.state === "all" || f.state === "killed" || stateOf(t) === f.state);
  }

  function tripCounts(trips, key) {
    const counts = new Map();
    for (const trip of trips) {
      const name = trip[key] || "-";
      counts.set(name, (counts.get(name) || 0) + 1);
    }
    return [...counts.entries()].sort((a, b) => b[1] - a[1]);
  }

  function renderTasksPage() {
    const table = el("table", { id: "tasks" },
      el("thead", {}, el("tr", {}, ["Task", "State", "Tenant", "Agents", "Tokens", "Dollars",
        "Calls", "Hops", "Deadline left", "Trip", "Refused"].map((h) => el("th", {}, h)))),
      el("tbody"));
    const cards = el("div", { class: "cards", id: "cards" });
    const charts = el("div", { class: "charts", id: "charts" });
    const view = el("div", {},
      cards, charts,
      el("h2", {}, "Tasks"),
      filterBar(() => poll(refresh)),
      table,
      el("p", { class: "empty", id: "no-tasks", hidden: true }, "No tasks yet: send a call " +
        "through Tripwire with an X-Task-Id header."));
    $("view").replaceChildren(view);

    // The charts and the feed read the audit trail: every fifth tick is often enough, and
    // at once when a task is killed or resumed.
    let ticks = 0, activity = null, feed = null, lastKilled = -1;
    async function refresh(generation) {
      const tasks = await fetchTasks();
      const killed = tasks.filter((t) => t.state === "killed").length;
      if (ticks++ % SLOW_EVERY === 0 || killed !== lastKilled) {
        [activity, feed] = await Promise.all([
          api("GET", "/activity"), api("GET", "/trips?limit=500")]);
      }
      lastKilled = killed;
      if (generation !== state.generation) return;
      table.tBodies[0].replaceChildren(...tasks.map(taskRow));
      $("no-tasks").hidden = tasks.length > 0;
      cards.replaceChildren(
        card("Tasks shown", count(tasks.length)),
        card("Killed", count(killed)),
        card("Trips (kill and shadow)", count(feed.trips.length)),
        card("Saved, estimated", money(feed.saved_usd_estimate),
          "refused calls × each task's average cost per call"));
      const minutes = activity.minutes;
      charts.replaceChildren(
        Charts.series("Spend", minutes.map((m) => m.cost_usd), money),
        Charts.series("Calls", minutes.map((m) => m.calls), count),
        Charts.bars("Trips by reason", tripCounts(feed.trips, "reason")),
        Charts.bars("Trips by agent", tripCounts(feed.trips, "agent")));
    }
    poll(refresh);
  }

  function card(label, value, note) {
    return el("div", { class: "card" },
      el("div", { class: "card-value" }, value),
      el("div", { class: "card-label" }, label),
      note ? el("div", { class: "card-note" }, note) : null);
  }

  // -- trips and savings ------------------------------------------------------------------

  function renderTripsPage() {
    const stopped = el("tbody");
    const feed = el("tbody");
    const total = el("p", { class: "saved", id: "saved-total" });
    $("view").replaceChildren(el("div", {},
      el("h2", {}, "Stopped runaways and what they saved"),
      total,
      el("table", { id: "stopped" },
        el("thead", {}, el("tr", {}, ["Task", "Reason", "Calls before the kill",
          "Average cost per call", "Calls refused after the kill", "Saved (estimate)"]
          .map((h) => el("th", {}, h)))),
        stopped),
      el("h2", {}, "Trips"),
      el("table", { id: "trips" },
        el("thead", {}, el("tr", {}, ["When", "Task", "Action", "Reason", "Agent", "By",
          "What happened"].map((h) => el("th", {}, h)))),
        feed)));

    async function refresh(generation) {
      const data = await api("GET", "/trips?limit=200");
      if (generation !== state.generation) return;
      total.textContent = `Estimated ${money(data.saved_usd_estimate)} saved: the calls each ` +
        "killed task made after its kill, times that task's average cost per call before it. " +
        "An estimate, not a measurement.";
      const none = (text) => el("tr", {}, el("td", { colspan: 7, class: "empty" }, text));
      if (!data.stopped.length) stopped.replaceChildren(none("No task is killed."));
      else stopped.replaceChildren(...data.stopped.map((s) => el("tr", { dataset: { task: s.task } },
        el("td", {}, el("a", { href: taskLink(s.task) }, s.task)),
        el("td", {}, s.reason),
        el("td", { class: "num" }, count(s.calls)),
        el("td", { class: "num" }, money(s.average_cost_usd)),
        el("td", { class: "num" }, count(s.refused_calls)),
        el("td", { class: "num" }, money(s.saved_usd_estimate)))));
      if (!data.trips.length) feed.replaceChildren(none("No trips yet."));
      else feed.replaceChildren(...data.trips.map((t) => el("tr", {},
        el("td", {}, clock(t.at)),
        el("td", {}, el("a", { href: taskLink(t.task) }, t.task)),
        el("td", {}, el("span", { class: "badge " + t.action }, t.action === "observe" ? "shadow" : t.action)),
        el("td", {}, t.reason),
        el("td", {}, t.agent || "-"),
        el("td", {}, t.actor),
        el("td", {}, t.detail))));
    }
    poll(refresh);
  }

  // -- one task ---------------------------------------------------------------------------

  function figuresInWords(figures) {
    return Object.entries(figures || {})
      .filter(([key]) => key !== "fingerprint")
      .map(([key, value]) => `${key.replace(/_/g, " ")} ${typeof value === "object" ? JSON.stringify(value) : value}`)
      .join(", ");
  }

  function actions(task, onDone) {
    if (!state.me.may_act) return null;
    const result = el("span", { class: "action-result", id: "action-result" });
    const run = async (action, body) => {
      try {
        await api("POST", taskPath(task.task, action), body);
        result.textContent = `${action} done`;
        onDone();
      } catch (error) {
        result.textContent = `${action} refused: ${error.message}`;
      }
    };
    const reason = el("input", { id: "kill-reason", placeholder: "reason", size: 24 });
    const raised = el("input", { id: "resume-max-tokens", type: "number", min: 1,
      placeholder: "new max tokens", value: task.max_tokens ? task.max_tokens * 2 : "" });
    const note = el("input", { id: "resume-note", placeholder: "note", size: 20 });
    const seconds = el("input", { id: "extend-seconds", type: "number", min: 1, value: 600, size: 6 });
    const extendNote = el("input", { id: "extend-note", placeholder: "note", size: 16 });
    const killed = task.state === "killed";
    return el("div", { class: "panel actions", id: "actions" },
      el("h3", {}, "Act on this task"),
      killed ? null : el("div", { class: "row" },
        reason,
        el("button", { type: "button", id: "kill", class: "danger", onclick: () =>
          run("kill", { reason: reason.value.trim() || "killed from the console" }) }, "Kill")),
      el("div", { class: "row" },
        el("label", {}, "Max tokens ", raised), note,
        el("button", { type: "button", id: "resume", onclick: () => {
          const body = { note: note.value.trim() };
          const value = parseInt(raised.value, 10);
          if (value > 0) body.limits = { max_tokens: value };
          run("resume", body);
        } }, killed ? "Resume" : "Set budget")),
      el("div", { class: "row" },
        el("label", {}, "Extend deadline by ", seconds, " s"), extendNote,
        el("button", { type: "button", id: "extend", onclick: () =>
          run("extend", { seconds: Number(seconds.value), note: extendNote.value.trim() }) },
        "Extend")),
      result);
  }

  function section(title, ...children) {
    return el("section", { class: "panel" }, el("h3", {}, title), ...children);
  }

  function renderTaskPage(id) {
    const root = el("div", { id: "task-page" });
    $("view").replaceChildren(root);
    let lastShape = "";

    async function refresh(generation) {
      const [task, audit] = await Promise.all([
        api("GET", taskPath(id)),
        api("GET", "/audit?limit=100&task=" + encodeURIComponent(id))]);
      if (generation !== state.generation) return;
      // Keep the action inputs (and what the user typed) unless the task's state changed.
      const shape = task.state;
      const keepActions = shape === lastShape ? $("actions") : null;
      lastShape = shape;
      const status = stateOf(task);
      const matched = task.trip && task.trip.figures ? task.trip.figures.fingerprint : null;
      root.replaceChildren(
        el("h2", {}, "Task ", el("span", { class: "task-id", id: "task-title" }, task.task), " ",
          el("span", { class: "badge " + status, id: "task-state" }, status)),
        el("div", { class: "cards" },
          card("Tokens", ofLimit(task.tokens_used, task.max_tokens, count)),
          card("Dollars", ofLimit(task.cost_usd, task.max_cost_usd, money)),
          card("Calls", ofLimit(task.calls, task.max_calls, count)),
          card("Hops", ofLimit(task.hops, task.max_hops, count)),
          card("Deadline left", task.state === "killed" ? "-" : deadlineLeft(task)),
          card("Refused after the kill", count(task.refused_calls))),
        task.trip ? el("section", { class: "panel trip", id: "trip" },
          el("h3", {}, "Stopped: ", task.trip.reason),
          el("p", {}, task.trip.detail + "."),
          el("p", { class: "figures" }, figuresInWords(task.trip.figures)),
          el("p", { class: "saved" }, savedLine(task))) : null,
        keepActions || actions(task, () => poll(refresh)),
        section("Hand-offs",
          task.recent_calls.length ? Charts.handoffs(task.recent_calls) : el("p", {}, "No calls yet."),
          el("p", { class: "note" }, `${plural(task.hops, "hand-off")} between ` +
            `${plural(task.agents.length, "agent")}; a line across lanes is a hand-off.`)),
        section("Calls", callsTable(task.recent_calls)),
        section("Last completions", task.previews.length ? el("ul", { class: "previews" },
          task.previews.map((p) => el("li", { class: p.fingerprint === matched ? "matched" : "" },
            p.fingerprint === matched ? el("span", { class: "badge killed" }, "matched") : null,
            el("span", { class: "agent" }, p.agent), el("q", {}, p.text))))
          : el("p", {}, "None yet.")),
        section("Status envelopes", Object.keys(task.envelopes).length
          ? el("p", {}, Object.entries(task.envelopes).map(([k, v]) => `${k} ${v}`).join(", "))
          : el("p", {}, "No worker envelopes.")),
        section("Timeline", el("ul", { class: "timeline" }, task.timeline.map((e) =>
          el("li", {}, el("time", {}, clock(e.at)), " ", el("b", {}, e.kind), " ", e.detail)))),
        section("Audit trail", el("ul", { class: "audit", id: "audit" }, audit.events.map((e) =>
          el("li", {}, el("time", {}, clock(e.at)), " ", el("b", {}, e.action), ` by ${e.actor}`,
            e.detail ? ": " + e.detail : ""))))
      );
    }
    poll(refresh);
  }

  function savedLine(task) {
    const average = task.calls ? task.cost_usd / task.calls : 0;
    return `${count(task.refused_calls)} calls refused after the kill; at this task's average ` +
      `of ${money(average)} per call they would have cost about ` +
      `${money(task.refused_calls * average)} (an estimate).`;
  }

  function callsTable(calls) {
    if (!calls.length) return el("p", {}, "No calls through this replica yet.");
    return el("table", { class: "calls" },
      el("thead", {}, el("tr", {}, ["Time", "Agent", "Model", "Tokens", "Cost", "Outcome"]
        .map((h) => el("th", {}, h)))),
      el("tbody", {}, calls.slice().reverse().map((c) => el("tr", { class: c.outcome === "ok" ? "" : "bad" },
        el("td", {}, clock(c.at)), el("td", {}, c.agent), el("td", {}, c.model),
        el("td", { class: "num" }, count(c.tokens)), el("td", { class: "num" }, money(c.cost_usd)),
        el("td", {}, c.outcome)))));
  }

  // -- routing ----------------------------------------------------------------------------

  async function route() {
    stopPolling();
    showError(null);
    if (!state.me && !(await signIn())) return;
    const hash = location.hash || "#/";
    $("nav-trips").classList.toggle("current", hash === "#/trips");
    $("nav-tasks").classList.toggle("current", hash === "#/" || hash === "");
    if (hash.startsWith("#/task/")) renderTaskPage(decodeURIComponent(hash.slice(7)));
    else if (hash === "#/trips") renderTripsPage();
    else renderTasksPage();
  }

  function start() {
    takeTokenFromLink();
    $("token-save").addEventListener("click", () => {
      sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
      $("token-input").value = "";
      state.me = null;
      route();
    });
    $("sign-out").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      state.me = null;
      showSignIn("Signed out.");
    });
    window.addEventListener("hashchange", route);
    route();
  }

  start();
})();
