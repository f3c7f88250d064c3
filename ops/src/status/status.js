// The status page: reads /api/v1/cluster and /api/v1/node every two seconds
// and fills in the page. Rates are the difference of two successive samples of
// the node's counters over the time between them.
"use strict";

(function () {
  const REFRESH_MS = 2000;
  const TOKEN_KEY = "starling-admin-token";

  // The previous sample of /api/v1/node and when it was taken.
  let previous = null;

  /** The element with this id. */
  function byId(id) {
    return document.getElementById(id);
  }

  /** Writes `value` into the element `id`, a dash when there is none. */
  function show(id, value) {
    byId(id).textContent = value === null || value === undefined ? "–" : String(value);
  }

  /** The admin token the user gave in this tab, if any. */
  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  /** GETs `path` of the admin API as JSON; throws an Error with a status. */
  async function getJson(path) {
    const headers = { Accept: "application/json" };
    if (token()) {
      headers.Authorization = "Bearer " + token();
    }
    const response = await fetch(path, { headers: headers, cache: "no-store" });
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      body = null;
    }
    if (!response.ok) {
      const message = body && body.error ? body.error.message : response.statusText;
      const error = new Error(path + ": " + response.status + " " + message);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  /** "3h 2m 1s" for a number of seconds. */
  function duration(seconds) {
    const d = Math.floor(seconds / 86400);
    const h = Math.floor((seconds % 86400) / 3600);
    const m = Math.floor((seconds % 3600) / 60);
    const s = seconds % 60;
    const parts = [];
    if (d) parts.push(d + "d");
    if (d || h) parts.push(h + "h");
    if (d || h || m) parts.push(m + "m");
    parts.push(s + "s");
    return parts.join(" ");
  }

  /** A table cell with `text`, and the field it shows for tests and styles. */
  function cell(field, text, className) {
    const td = document.createElement("td");
    td.dataset.field = field;
    td.textContent = text === null || text === undefined ? "–" : String(text);
    if (className) {
      td.className = className;
    }
    return td;
  }

  /** One row of the members table. */
  function memberRow(member) {
    const tr = document.createElement("tr");
    tr.dataset.member = String(member.id);
    tr.dataset.role = member.role;
    tr.dataset.up = String(member.up);
    if (member.role === "leader") tr.classList.add("leader");
    if (!member.up) tr.classList.add("down");
    tr.append(
      cell("id", member.id, "number"),
      cell("address", member.address),
      cell("role", member.role),
      cell("up", member.up ? "up" : "down", member.up ? "up" : "down-label"),
      cell("connections", member.connections, "number"),
      cell("lag", member.lag, "number"),
    );
    return tr;
  }

  /** Fills in the cluster as the answering node sees it. */
  function showCluster(cluster) {
    show("leader", cluster.leader === null ? "none" : cluster.leader);
    show("term", cluster.term);
    const up = cluster.members.filter((m) => m.up).length;
    show("members-up", up + " of " + cluster.members.length);
    show("last-log-index", cluster.last_log_index);
    show("applied-index", cluster.applied_index);
    show("snapshot-index", cluster.snapshot_index);
    show("applied-commands", cluster.applied_commands);
    const members = cluster.members.slice().sort((a, b) => a.id - b.id);
    byId("members").replaceChildren(...members.map(memberRow));
  }

  /** Per second between two samples of a counter, one decimal. */
  function rate(now, before, seconds) {
    if (seconds <= 0) return "–";
    return (Math.max(0, now - before) / seconds).toFixed(1);
  }

  /** Fills in this node's figures, and its rates from the previous sample. */
  function showNode(node, at) {
    show("node-id", node.node_id);
    show("version", node.version);
    show("uptime", duration(node.uptime_seconds));
    show("connections", node.connections);
    show("total-in", node.messages_received);
    show("total-out", node.messages_sent);
    show("total-dropped", node.messages_dropped);
    // A sample from another process (restarted, or another node behind the
    // same address) gives no rate.
    if (previous && previous.node.node_id === node.node_id &&
        previous.node.uptime_seconds <= node.uptime_seconds) {
      const seconds = (at - previous.at) / 1000;
      show("rate-in", rate(node.messages_received, previous.node.messages_received, seconds));
      show("rate-out", rate(node.messages_sent, previous.node.messages_sent, seconds));
      show("rate-dropped", rate(node.messages_dropped, previous.node.messages_dropped, seconds));
    }
    previous = { node: node, at: at };
  }

  /** Says how the last refresh went. */
  function setStatus(state, text) {
    document.body.dataset.state = state;
    show("status", text);
  }

  /** Reads both routes once and shows them, or says why not. */
  async function refresh() {
    try {
      const [cluster, node] = await Promise.all([
        getJson("/api/v1/cluster"),
        getJson("/api/v1/node"),
      ]);
      const at = performance.now();
      showCluster(cluster);
      showNode(node, at);
      setStatus("live", "Live · updated " + new Date().toLocaleTimeString());
    } catch (error) {
      if (error.status === 401 || error.status === 403) {
        setStatus("auth", "The admin API refused: paste the node's admin token above. (" +
          error.message + ")");
      } else {
        setStatus("error", "Cannot read the node, showing the last figures: " + error.message);
      }
    }
  }

  /** Refreshes now, then every REFRESH_MS after each refresh ends. */
  async function loop() {
    await refresh();
    setTimeout(loop, REFRESH_MS);
  }

  /** Keeps the token the user pastes in this tab's session storage. */
  function setUpTokenForm() {
    const input = byId("token");
    input.value = token();
    byId("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      previous = null;
      refresh();
    });
    byId("token-forget").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      input.value = "";
      refresh();
    });
  }

  setUpTokenForm();
  loop();
})();
