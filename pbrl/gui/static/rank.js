// pbrl "Rank what matters": order a run's reward factors (HERON), most important first.
// Drag and drop (HTML5 drag events) or keyboard; Save posts the order to /api/ranking.
"use strict";

// items: [{name, higher}] in rank order; saved: the stored ranking's items (or null)
const state = { run: null, items: [], saved: null, selected: 0, dragging: null, busy: false };
const list = $("factors");

const announce = (text) => { $("live").textContent = text; };
const order = () => state.items.map((f) => f.name);
const same = (a, b) => !!a && !!b && a.length === b.length && a.every((f, i) => f.name === b[i].name && f.higher === b[i].higher);

function setState() {
  const dirty = !same(state.items, state.saved);
  document.body.dataset.state = state.busy ? "busy" : !state.run ? "empty" : dirty ? "dirty" : "saved";
  document.body.dataset.order = order().join(",");
  document.body.dataset.directions = state.items.map((f) => (f.higher ? "+" : "-")).join(",");
  $("save").disabled = state.busy || !state.run || !state.items.length;
  $("save").textContent = dirty && state.run ? "Save ranking (not saved yet)" : "Save ranking";
  $("revert").disabled = state.busy || !state.saved || !dirty;
}

// -- the list ---------------------------------------------------------------------------
function render() {
  list.textContent = "";
  state.items.forEach((f, i) => {
    const li = document.createElement("li");
    li.id = "factor-" + i;
    li.dataset.factor = f.name;
    li.setAttribute("role", "option");
    li.setAttribute("aria-selected", String(i === state.selected));
    li.draggable = true;
    li.classList.toggle("selected", i === state.selected);
    const pos = document.createElement("span");
    pos.className = "pos";
    pos.textContent = String(i + 1);
    const handle = document.createElement("span");
    handle.className = "handle";
    handle.setAttribute("aria-hidden", "true");
    handle.textContent = "⠿";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = f.name;
    const dir = document.createElement("button");
    dir.type = "button";
    dir.className = "dir";
    dir.tabIndex = -1;  // the list handles keys (t); a click toggles too
    dir.setAttribute("aria-pressed", String(f.higher));
    dir.setAttribute("aria-label", `${f.name}: ${f.higher ? "higher" : "lower"} is better (press to flip)`);
    dir.textContent = f.higher ? "▲ higher is better" : "▼ lower is better";
    dir.addEventListener("click", (e) => { e.stopPropagation(); select(i); flip(); });
    li.append(pos, handle, name, dir);
    li.addEventListener("click", () => { select(i); list.focus(); });
    li.addEventListener("dragstart", (e) => {
      state.dragging = i;
      li.classList.add("dragging");
      e.dataTransfer.effectAllowed = "move";
      e.dataTransfer.setData("text/plain", f.name);
    });
    li.addEventListener("dragend", () => { state.dragging = null; clearDropMarks(); render(); });
    li.addEventListener("dragover", (e) => {
      if (state.dragging === null) return;
      e.preventDefault();  // allow the drop
      e.dataTransfer.dropEffect = "move";
      clearDropMarks();
      li.classList.add(dropsBefore(e, li) ? "drop-before" : "drop-after");
    });
    li.addEventListener("drop", (e) => {
      e.preventDefault();
      const from = state.dragging;
      if (from === null) return;
      let to = dropsBefore(e, li) ? i : i + 1;  // insertion index in the list before removal
      if (from < to) to -= 1;
      state.dragging = null;
      move(from, to);
    });
    list.appendChild(li);
  });
  list.setAttribute("aria-activedescendant", state.items.length ? "factor-" + state.selected : "");
  setState();
}

const dropsBefore = (e, li) => { const r = li.getBoundingClientRect(); return e.clientY < r.top + r.height / 2; };
function clearDropMarks() { for (const li of list.children) li.classList.remove("drop-before", "drop-after"); }

function select(i) {
  if (!state.items.length) return;
  state.selected = Math.max(0, Math.min(state.items.length - 1, i));
  render();
  announce(`${state.items[state.selected].name}, rank ${state.selected + 1} of ${state.items.length}`);
}

function move(from, to) {
  const n = state.items.length;
  to = Math.max(0, Math.min(n - 1, to));
  if (from === to || from < 0 || from >= n) { render(); return; }
  const [f] = state.items.splice(from, 1);
  state.items.splice(to, 0, f);
  state.selected = to;
  render();
  announce(`${f.name} moved to rank ${to + 1} of ${n}`);
}

function flip() {
  const f = state.items[state.selected];
  if (!f) return;
  f.higher = !f.higher;
  render();
  announce(`${f.name}: ${f.higher ? "higher" : "lower"} is better`);
}

list.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey || state.busy) return;
  const up = e.key === "ArrowUp", down = e.key === "ArrowDown";
  if ((up || down) && e.shiftKey) { e.preventDefault(); move(state.selected, state.selected + (up ? -1 : 1)); }
  else if (up || e.key === "k") { e.preventDefault(); select(state.selected - 1); }
  else if (down || e.key === "j") { e.preventDefault(); select(state.selected + 1); }
  else if (e.key === "u" || e.key === "U") { e.preventDefault(); move(state.selected, state.selected - 1); }
  else if (e.key === "d" || e.key === "D") { e.preventDefault(); move(state.selected, state.selected + 1); }
  else if (e.key === "t" || e.key === "T") { e.preventDefault(); flip(); }
  else if (e.key === "Home") { e.preventDefault(); select(0); }
  else if (e.key === "End") { e.preventDefault(); select(state.items.length - 1); }
});

// -- the run and its stored ranking -----------------------------------------------------------
function showSaved(ranking, history) {
  if (!ranking) { $("saved").textContent = "Nobody has ranked this run's factors yet."; return; }
  const when = new Date(ranking.created_at * 1000).toLocaleString();
  const parts = ranking.factors.map((f, i) => `${f} (${ranking.higher_is_better[i] ? "higher" : "lower"} is better)`);
  $("saved").textContent = `Saved ranking #${ranking.id} by ${ranking.annotator}, ${when}: ${parts.join(" > ")}` +
    (history > 1 ? ` · ${history} rankings saved for this run, the latest counts` : "");
  document.body.dataset.savedId = String(ranking.id);
}

async function loadRun(name) {
  state.run = null;
  state.items = [];
  state.saved = null;
  render();
  if (!name) return;
  try {
    const r = await api("/api/ranking?run=" + encodeURIComponent(name));
    const run = r.run;
    state.run = run.name;
    $("envid").textContent = run.env_id ? "environment: " + run.env_id : "";
    $("task").textContent = `Order the reward factors of ${run.env_id || "this run"}, most important first.` +
      (run.task ? ` (The task: ${run.task})` : "");
    if (run.ranking) {
      state.saved = run.ranking.factors.map((f, i) => ({ name: f, higher: run.ranking.higher_is_better[i] }));
      state.items = state.saved.map((f) => ({ ...f }));
    } else {
      state.items = run.factors.map((f) => ({ name: f, higher: true }));
    }
    state.selected = 0;
    showSaved(run.ranking, r.history);
    if (!run.factors.length) say(`${run.env_id || "This run's environment"} reports no reward factors: nothing to rank.`, true);
    else say(run.ranking ? "" : "Not ranked yet: order the factors, then Save.");
    render();
  } catch (e) {
    say(e.message, true);
    render();
  }
}

async function save() {
  if (!state.run || state.busy) return;
  const annotator = $("annotator").value.trim();
  if (!annotator) { say("Type your name above first: every ranking records who gave it.", true); $("annotator").focus(); return; }
  state.busy = true;
  setState();
  try {
    const r = await api("/api/ranking", {
      annotator, run: state.run, factors: order(), higher_is_better: state.items.map((f) => f.higher),
    });
    state.saved = r.ranking.factors.map((f, i) => ({ name: f, higher: r.ranking.higher_is_better[i] }));
    showSaved(r.ranking, r.history);
    say("Saved. A teacher=heron run with teacher.ranking=store uses the latest ranking.");
  } catch (e) {
    say(e.message, true);
  } finally {
    state.busy = false;
    render();
  }
}

async function loadRuns() {
  let runs = [];
  try { runs = (await api("/api/runs")).runs; } catch (e) { say(e.message, true); return; }
  const select = $("run");
  select.textContent = "";
  const wanted = params.get("run");
  if (wanted && !runs.some((r) => r.name === wanted)) runs.unshift({ name: wanted, env_id: "?" });
  for (const r of runs) {
    const option = document.createElement("option");
    option.value = r.name;
    option.textContent = `${r.name} (${r.env_id || "no environment"})`;
    select.appendChild(option);
  }
  if (!runs.length) {
    say("This store knows no runs yet: a teacher=heron run with teacher.ranking=store registers " +
        "its run here, or run `python -m pbrl.label ranking --db STORE --run NAME --env ENV_ID`.");
    render();
    return;
  }
  const first = runs.find((r) => r.factors && r.factors.length) || runs[0];
  select.value = wanted || first.name;
  await loadRun(select.value);
}

// -- input ---------------------------------------------------------------------------------
$("save").addEventListener("click", save);
$("revert").addEventListener("click", () => {
  if (!state.saved) return;
  state.items = state.saved.map((f) => ({ ...f }));
  render();
  say("Back to the saved ranking.");
});
$("run").addEventListener("change", (e) => {
  const name = e.target.value;
  const next = new URLSearchParams(location.search);
  next.set("run", name);
  history.replaceState(null, "", location.pathname + "?" + next.toString());
  loadRun(name);
});
$("annotator").addEventListener("change", (e) => { localStorage.setItem("pbrl.annotator", e.target.value.trim()); });
$("annotator").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); list.focus(); } });
window.addEventListener("beforeunload", (e) => {
  if (document.body.dataset.state === "dirty") { e.preventDefault(); e.returnValue = ""; }
});
if (token) $("labellink").href = withToken("/");

// -- start --------------------------------------------------------------------------------
$("annotator").value = (params.get("annotator") || localStorage.getItem("pbrl.annotator") || "").trim();
loadRuns();
