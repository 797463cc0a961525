// Ranking three clips (RAPL triplets) on the labeling page: clip 1 = a, 2 = b, 3 = c.
// Keys: the clip numbers from best to worst; "=" before a number ties it with the one
// before; Backspace takes the last key back; Enter saves once two are ranked (the third
// comes last). The server stores a ranking as the triplet's three pair answers.
"use strict";

const MEMBERS = ["a", "b", "c"];
const ranking = { steps: [], tie: false };  // steps: [{ clip: 0..2, tie: equal to the one before }]

function rankingReset() {
  ranking.steps = [];
  ranking.tie = false;
  showRanking();
}

const ranked = (clip) => ranking.steps.some((s) => s.clip === clip);

// One key of the ranking being typed ("1" "2" "3" "=" "Backspace"); true once all three
// clips are ranked.
function rankingKey(key) {
  if (key === "Backspace") {
    if (ranking.tie) ranking.tie = false; else ranking.steps.pop();
  } else if (key === "=") {
    if (!ranking.steps.length) { say("Press a clip number first: = ties the next clip with the one before.", true); return false; }
    if (ranking.steps.length === 3) return false;
    ranking.tie = true;
  } else {
    const clip = Number(key) - 1;
    if (ranked(clip)) { say(`Clip ${clip + 1} is ranked already: Backspace takes the last key back.`, true); return false; }
    ranking.steps.push({ clip, tie: ranking.tie });
    ranking.tie = false;
  }
  say("");
  showRanking();
  return ranking.steps.length === 3;
}

// Enter: with two clips ranked, the third comes last (tied with the second after "=").
function rankingComplete() {
  if (ranking.steps.length !== 2) return false;
  ranking.steps.push({ clip: [0, 1, 2].find((c) => !ranked(c)), tie: ranking.tie });
  ranking.tie = false;
  showRanking();
  return true;
}

// The ranking as the server takes it: {a: 0, b: 1, c: 1} (0 best, equal ranks tie).
function rankingRanks() {
  const ranks = {};
  let rank = -1;
  for (const s of ranking.steps) { if (!s.tie) rank += 1; ranks[MEMBERS[s.clip]] = rank; }
  return ranks;
}

// {a: 1, b: 0, c: 1} -> "2 > 1 = 3" (clip numbers, best first).
function ranksText(ranks) {
  const order = [0, 1, 2].sort((i, j) => ranks[MEMBERS[i]] - ranks[MEMBERS[j]]);
  return order.map((c, k) => (k === 0 ? "" : ranks[MEMBERS[c]] === ranks[MEMBERS[order[k - 1]]] ? " = " : " > ") + (c + 1)).join("");
}

// The ranking being built, e.g. "2 > 1 > (3)", and each clip's place on its video.
function showRanking() {
  const parts = ranking.steps.map((s, k) => (k === 0 ? "" : s.tie ? " = " : " > ") + (s.clip + 1));
  if (ranking.tie) parts.push(" =");
  else if (ranking.steps.length === 2) parts.push(` > (${[0, 1, 2].find((c) => !ranked(c)) + 1})`);
  const text = parts.join("");
  $("ranking").textContent = text || "—";
  $("ranking-hint").textContent = ranking.steps.length === 2 ? "Enter saves (the clip in brackets comes last), or press its number; = before it ties it." : "";
  const ranks = rankingRanks();
  MEMBERS.forEach((m, i) => { $("place" + (i + 1)).textContent = m in ranks ? "#" + (ranks[m] + 1) : ""; });
  document.body.dataset.ranking = text;
}
