// pbrl labeling page: keyboard first, plain JS, no external assets.
// Left = the query's first segment (label 0), right = the second (label 1). A triplet's
// three pairs come as one lease: three clips to rank (triplet.js).
"use strict";

const KEYS = { ArrowLeft: "left", ArrowRight: "right", ArrowDown: "equal", "=": "equal", s: "skip", S: "skip" };
const WORDS = { left: "left is better", right: "right is better", equal: "equally good", skip: "skipped" };
const SPEEDS = [0.25, 0.5, 1, 2, 4];

const state = { annotator: "", lease: null, busy: false, waiting: null, speed: 1 };
const left = $("left"), right = $("right");
const clips = [$("clip1"), $("clip2"), $("clip3")];
const ALL_VIDEOS = [left, right, ...clips];
const isTriplet = () => !!(state.lease && state.lease.triplet);
const shown = () => (isTriplet() ? clips : [left, right]);  // the videos on screen, in sync

function showProgress(p) {
  if (!p) return;
  $("answered").textContent = p.answered;
  $("total").textContent = p.total;
  $("pending").textContent = p.pending;
  $("mine").textContent = p.mine;
  // reward=vpl: how sure the model is about this annotator's latent (1.0 = the prior)
  const z = p.z;
  $("zspread-box").hidden = !z;
  if (z) {
    $("zspread").textContent = z.spread.toFixed(2);
    $("zspread-box").title = `posterior std of your latent z from ${z.labels} labels (prior 1.0; smaller = surer)`;
  }
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

function unload(videos) {
  for (const v of videos) { if (v.getAttribute("src")) { v.removeAttribute("src"); v.load(); } }
}

function showKind(triplet) {
  document.body.dataset.kind = triplet ? "triplet" : "pair";
  document.body.dataset.triplet = triplet ? triplet.id : "";
  $("pair").hidden = !!triplet;
  $("triplet").hidden = !triplet;
  $("ranking-box").hidden = !triplet;
  $("heading").textContent = triplet ? "Rank the three clips, best first" : "Which clip is better?";
  rankingReset();
}

function show(lease) {
  state.lease = lease;
  clearTimeout(state.waiting);
  document.body.dataset.query = lease ? lease.query_id : "";
  showSuggestion(lease ? lease.suggestion : null);
  showKind(lease && lease.triplet);
  if (!lease) {
    unload(ALL_VIDEOS);
    say(state.annotator ? "Nothing to label right now: new pairs appear here as the trainer asks." : "");
    state.waiting = setTimeout(loadNext, 3000);
    setBusy(false);
    return;
  }
  if (lease.triplet) {
    unload([left, right]);
    clips.forEach((v, i) => { v.src = withToken(lease.triplet.clips["abc"[i]]); });
  } else {
    unload(clips);
    left.src = withToken(lease.clips.left);
    right.src = withToken(lease.clips.right);
  }
  for (const v of shown()) { v.defaultPlaybackRate = state.speed; v.playbackRate = state.speed; }
  setBusy(false);
}

function startWhenAllReady() {
  const videos = shown();
  if (videos.every((v) => v.readyState >= 2)) {
    for (const v of videos) { v.currentTime = 0; v.play().catch(() => {}); }
  }
}
for (const v of ALL_VIDEOS) {
  v.addEventListener("loadeddata", startWhenAllReady);
  v.addEventListener("error", () => { if (state.lease && v.getAttribute("src")) say("This clip could not be loaded: press S to skip it.", true); });
}

// Keep every clip on the first clip's clock (all loop); drift happens at loop ends.
function sync() {
  const [lead, ...rest] = shown();
  if (state.lease && !lead.paused && lead.readyState >= 2) {
    for (const v of rest) {
      if (v.readyState < 2 || v.seeking) continue;
      if (Math.abs(v.currentTime - lead.currentTime) > 0.08) v.currentTime = lead.currentTime;
      if (v.paused) v.play().catch(() => {});
    }
  }
  requestAnimationFrame(sync);
}
requestAnimationFrame(sync);

function setSpeed(speed) {
  state.speed = speed;
  $("speed").value = String(speed);
  for (const v of ALL_VIDEOS) { v.defaultPlaybackRate = speed; v.playbackRate = speed; }
}

function togglePause() {
  const videos = shown();
  if (videos[0].paused) { for (const v of videos) v.play().catch(() => {}); }
  else { for (const v of videos) v.pause(); }
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
  if (isTriplet()) { if (choice === "skip") submitRanking("skip"); return; }
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

// A triplet's ranking ({a: 0, b: 1, c: 1}, or "skip"): its three pair answers, stored together.
async function submitRanking(ranks) {
  if (!isTriplet() || state.busy) return;
  const lease = state.lease;
  setBusy(true);
  if (ranks === "skip") flash("skip");
  try {
    const r = await api("/api/answer_triplet", { annotator: state.annotator, lease_id: lease.lease_id, triplet_id: lease.triplet.id, ranks });
    say(`Saved: ${ranks === "skip" ? "skipped" : ranksText(ranks)}. Press U to undo.`);
    showProgress(r.progress);
    show(r.lease);
  } catch (e) {
    rankingReset();
    if (e.status === 409 || e.status === 410) { say(e.message, true); await loadNext(); }
    else { say(e.message, true); setBusy(false); }
  }
}

function undoneText(undone) {
  const t = undone.triplet;
  if (t) return t.ranks ? ranksText(t.ranks) : "skipped";
  return WORDS[undone.label === null ? "skip" : ({ 0: "left", 1: "right", 0.5: "equal" })[undone.label]];
}

async function undo() {
  if (state.busy || !state.annotator) return;
  setBusy(true);
  try {
    const r = await api("/api/undo", { annotator: state.annotator });
    say(`Undone (you had said: ${undoneText(r.undone)}). Answer this ${r.undone.triplet ? "triplet" : "pair"} again.`);
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
const RANK_KEYS = ["1", "2", "3", "=", "Backspace", "Enter", "ArrowLeft", "ArrowRight", "ArrowDown", "ArrowUp"];

// A key of a triplet's ranking (triplet.js): a clip number, "=", Backspace or Enter.
function rankKey(key) {
  if (!isTriplet() || state.busy) return;
  if (key === "Enter") {
    if (rankingComplete()) submitRanking(rankingRanks());
    else say("Rank two clips first (their numbers, best first): Enter then puts the third last.", true);
  } else if (key.startsWith("Arrow")) {
    say("Three clips: press their numbers from best to worst (e.g. 2, 1, 3).", true);
  } else if (rankingKey(key)) {
    submitRanking(rankingRanks());
  }
}

document.addEventListener("keydown", (e) => {
  const tag = (e.target && e.target.tagName) || "";
  if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA" || e.ctrlKey || e.metaKey || e.altKey) return;
  if (isTriplet() && RANK_KEYS.includes(e.key)) { e.preventDefault(); if (!e.repeat) rankKey(e.key); }
  else if (e.key in KEYS) { e.preventDefault(); if (!e.repeat) answer(KEYS[e.key]); }
  else if (e.key === "u" || e.key === "U") { e.preventDefault(); if (!e.repeat) undo(); }
  else if (e.key === " ") { e.preventDefault(); togglePause(); }
  else if (e.key === "[" || e.key === "]") {
    const i = SPEEDS.indexOf(state.speed) + (e.key === "]" ? 1 : -1);
    setSpeed(SPEEDS[Math.max(0, Math.min(SPEEDS.length - 1, i))]);
  }
});
for (const b of document.querySelectorAll("button[data-choice]")) b.addEventListener("click", () => { b.blur(); answer(b.dataset.choice); });
$("btn-undo").addEventListener("click", (e) => { e.currentTarget.blur(); undo(); });
$("btn-back").addEventListener("click", (e) => { e.currentTarget.blur(); rankKey("Backspace"); });
$("btn-save").addEventListener("click", (e) => { e.currentTarget.blur(); rankKey("Enter"); });
clips.forEach((v, i) => v.parentElement.addEventListener("click", () => { if (isTriplet()) rankKey(String(i + 1)); }));
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
