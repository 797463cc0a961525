// pbrl labeling page: keyboard first, plain JS, no external assets.
// Left = the query's first segment (label 0), right = the second (label 1).
"use strict";

const KEYS = { ArrowLeft: "left", ArrowRight: "right", ArrowDown: "equal", "=": "equal", s: "skip", S: "skip" };
const WORDS = { left: "left is better", right: "right is better", equal: "equally good", skip: "skipped" };
const SPEEDS = [0.25, 0.5, 1, 2, 4];

const state = { annotator: "", lease: null, busy: false, waiting: null, speed: 1 };
const left = $("left"), right = $("right");

function showProgress(p) {
  if (!p) return;
  $("answered").textContent = p.answered;
  $("total").textContent = p.total;
  $("pending").textContent = p.pending;
  $("mine").textContent = p.mine;
}

// -- the pair -------------------------------------------------------------------------------
function setBusy(busy) {
  state.busy = busy;
  document.body.dataset.state = busy ? "busy" : (state.lease ? "ready" : "empty");
  for (const b of document.querySelectorAll(".buttons button")) b.disabled = busy || (!state.lease && b.id !== "btn-undo");
}

// A VLM's answer to this pair, shown as a suggestion only: nothing is preselected, the
// person answers with the usual keys (the store keeps both).
function showSuggestion(s) {
  $("suggestion").hidden = !s;
  document.body.dataset.suggestion = s ? s.word : "";
  if (!s) return;
  $("suggestion-word").textContent = s.word;
  $("suggestion-word").className = "word-" + s.word;
  $("suggestion-model").textContent = s.model ? "(" + s.model + ")" : "";
  $("suggestion-analysis").textContent = s.analysis || "(no analysis text)";
  $("suggestion-details").open = false;
}

function show(lease) {
  state.lease = lease;
  clearTimeout(state.waiting);
  document.body.dataset.query = lease ? lease.query_id : "";
  showSuggestion(lease ? lease.suggestion : null);
  if (!lease) {
    left.removeAttribute("src"); right.removeAttribute("src");
    left.load(); right.load();
    say(state.annotator ? "Nothing to label right now: new pairs appear here as the trainer asks." : "");
    state.waiting = setTimeout(loadNext, 3000);
    setBusy(false);
    return;
  }
  left.src = withToken(lease.clips.left);
  right.src = withToken(lease.clips.right);
  for (const v of [left, right]) { v.defaultPlaybackRate = state.speed; v.playbackRate = state.speed; }
  setBusy(false);
}

function startWhenBothReady() {
  if (left.readyState >= 2 && right.readyState >= 2) {
    left.currentTime = 0; right.currentTime = 0;
    left.play().catch(() => {}); right.play().catch(() => {});
  }
}
left.addEventListener("loadeddata", startWhenBothReady);
right.addEventListener("loadeddata", startWhenBothReady);
for (const v of [left, right]) {
  v.addEventListener("error", () => { if (state.lease && v.getAttribute("src")) say("This clip could not be loaded: press S to skip it.", true); });
}

// Keep the right clip on the left clip's clock (both loop); drift happens at loop ends.
function sync() {
  if (state.lease && !left.paused && left.readyState >= 2 && right.readyState >= 2 && !right.seeking) {
    if (Math.abs(right.currentTime - left.currentTime) > 0.08) right.currentTime = left.currentTime;
    if (right.paused) right.play().catch(() => {});
  }
  requestAnimationFrame(sync);
}
requestAnimationFrame(sync);

function setSpeed(speed) {
  state.speed = speed;
  $("speed").value = String(speed);
  for (const v of [left, right]) { v.defaultPlaybackRate = speed; v.playbackRate = speed; }
}

function togglePause() {
  if (left.paused) { left.play().catch(() => {}); right.play().catch(() => {}); }
  else { left.pause(); right.pause(); }
}

// -- talking to the store ------------------------------------------------------------------
async function loadNext() {
  clearTimeout(state.waiting);
  if (!state.annotator) { show(null); say("Type your name above to start labeling."); $("annotator").focus(); return; }
  try {
    const r = await api("/api/next", { annotator: state.annotator });
    showProgress(r.progress);
    show(r.lease);
  } catch (e) {
    say(e.message, true);
    state.waiting = setTimeout(loadNext, 3000);
  }
}

function flash(choice) {
  const button = document.querySelector(`button[data-choice="${choice}"]`);
  if (button) { button.classList.add("flash"); setTimeout(() => button.classList.remove("flash"), 180); }
}

async function answer(choice) {
  if (!state.lease || state.busy) return;
  const lease = state.lease;
  setBusy(true);
  flash(choice);
  try {
    const r = await api("/api/answer", { annotator: state.annotator, lease_id: lease.lease_id, query_id: lease.query_id, label: choice });
    say(`Saved: ${WORDS[choice]}. Press U to undo.`);
    showProgress(r.progress);
    show(r.lease);
  } catch (e) {
    if (e.status === 409 || e.status === 410) { say(e.message, true); await loadNext(); }
    else { say(e.message, true); setBusy(false); }
  }
}

async function undo() {
  if (state.busy || !state.annotator) return;
  setBusy(true);
  try {
    const r = await api("/api/undo", { annotator: state.annotator });
    const was = r.undone.label === null ? "skip" : ({ 0: "left", 1: "right", 0.5: "equal" })[r.undone.label];
    say(`Undone (you had said: ${WORDS[was]}). Answer this pair again.`);
    showProgress(r.progress);
    show(r.lease);
  } catch (e) {
    say(e.message, true);
    setBusy(false);
  }
}

async function refreshStatus() {
  try {
    const s = await api("/api/status" + (state.annotator ? "?annotator=" + encodeURIComponent(state.annotator) : ""));
    $("task").textContent = s.task;
    $("envid").textContent = s.env_id ? "environment: " + s.env_id : "";
    showProgress(s.progress);
    const ev = s.eval_video;
    $("eval").hidden = !ev;
    if (ev) {
      const url = withToken(ev.url);
      if ($("evalvideo").dataset.url !== url) {
        $("evalvideo").dataset.url = url;
        $("evalvideo").src = url;
        $("evalvideo").play().catch(() => {});
      }
      const parts = [];
      if (ev.step) parts.push(`after ${Number(ev.step).toLocaleString()} environment steps`);
      if (ev.true_return) parts.push(`true return ${Number(ev.true_return).toFixed(1)}`);
      $("evalinfo").textContent = parts.join(" · ");
    }
  } catch (e) { /* the next poll retries */ }
}

async function renew() {
  if (!state.lease || state.busy || document.visibilityState !== "visible") return;
  try { await api("/api/renew", { annotator: state.annotator, lease_id: state.lease.lease_id }); }
  catch (e) { if (e.status === 410 || e.status === 409 || e.status === 404) await loadNext(); }
}

// -- input ----------------------------------------------------------------------------------
document.addEventListener("keydown", (e) => {
  const tag = (e.target && e.target.tagName) || "";
  if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA" || e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key in KEYS) { e.preventDefault(); if (!e.repeat) answer(KEYS[e.key]); }
  else if (e.key === "u" || e.key === "U") { e.preventDefault(); if (!e.repeat) undo(); }
  else if (e.key === " ") { e.preventDefault(); togglePause(); }
  else if (e.key === "[" || e.key === "]") {
    const i = SPEEDS.indexOf(state.speed) + (e.key === "]" ? 1 : -1);
    setSpeed(SPEEDS[Math.max(0, Math.min(SPEEDS.length - 1, i))]);
  }
});
for (const b of document.querySelectorAll("button[data-choice]")) b.addEventListener("click", () => { b.blur(); answer(b.dataset.choice); });
$("btn-undo").addEventListener("click", (e) => { e.currentTarget.blur(); undo(); });
$("speed").addEventListener("change", (e) => { setSpeed(Number(e.target.value)); e.target.blur(); });
$("annotator").addEventListener("change", (e) => {
  const name = e.target.value.trim();
  if (state.annotator && state.annotator !== name) release();
  state.annotator = name;
  localStorage.setItem("pbrl.annotator", name);
  e.target.blur();
  refreshStatus();
  loadNext();
});
$("annotator").addEventListener("keydown", (e) => { if (e.key === "Enter") e.target.blur(); });

function release() {
  if (!state.annotator || !state.lease) return;
  const blob = new Blob([JSON.stringify({ annotator: state.annotator })], { type: "application/json" });
  navigator.sendBeacon(withToken("/api/release"), blob);
}
window.addEventListener("pagehide", release);
if (token) { $("statslink").href = withToken("/stats"); $("ranklink").href = withToken("/rank"); }

// -- start ----------------------------------------------------------------------------------
state.annotator = (params.get("annotator") || localStorage.getItem("pbrl.annotator") || "").trim();
$("annotator").value = state.annotator;
if (params.get("speed") && SPEEDS.includes(Number(params.get("speed")))) setSpeed(Number(params.get("speed")));
refreshStatus();
loadNext();
setInterval(refreshStatus, 5000);
setInterval(renew, 60000);
