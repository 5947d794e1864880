// Word-level diff between a suggestion and the clinician's edit, computed here (no library):
// Myers' O(ND) algorithm (E. W. Myers, "An O(ND) Difference Algorithm and Its Variations",
// 1986) over word, space and punctuation tokens.

const TOKEN = /[\p{L}\p{N}]+|\s+|[^\p{L}\p{N}\s]/gu;
/**
 * Past this many differing tokens the rest reads as "all replaced" instead of searching on:
 * the search keeps O(D²) numbers, and a rewrite that large is not read word by word anyway.
 */
const MAX_EDIT = 1000;

export function tokenize(text) {
  return String(text ?? "").match(TOKEN) ?? [];
}

function myers(a, b) {
  const n = a.length;
  const m = b.length;
  const max = Math.min(n + m, MAX_EDIT);
  const offset = max + 1;
  const v = new Int32Array(2 * max + 3);
  const trace = [];
  for (let d = 0; d <= max; d += 1) {
    // Only diagonals -d-1 .. d+1 can be read back at this step: keep just those.
    trace.push(v.slice(offset - d - 1, offset + d + 2));
    for (let k = -d; k <= d; k += 2) {
      let x = k === -d || (k !== d && v[offset + k - 1] < v[offset + k + 1]) ? v[offset + k + 1] : v[offset + k - 1] + 1;
      let y = x - k;
      while (x < n && y < m && a[x] === b[y]) {
        x += 1;
        y += 1;
      }
      v[offset + k] = x;
      if (x >= n && y >= m) return backtrack(trace, a, b);
    }
  }
  return null;
}

function backtrack(trace, a, b) {
  const ops = [];
  let x = a.length;
  let y = b.length;
  for (let d = trace.length - 1; d > 0; d -= 1) {
    const v = trace[d];
    const at = (k) => v[k + d + 1];
    const k = x - y;
    const prevK = k === -d || (k !== d && at(k - 1) < at(k + 1)) ? k + 1 : k - 1;
    const prevX = at(prevK);
    const prevY = prevX - prevK;
    while (x > prevX && y > prevY) {
      ops.push({ op: "eq", text: a[x - 1] });
      x -= 1;
      y -= 1;
    }
    if (x === prevX) ops.push({ op: "ins", text: b[y - 1] });
    else ops.push({ op: "del", text: a[x - 1] });
    x = prevX;
    y = prevY;
  }
  while (x > 0 && y > 0) {
    ops.push({ op: "eq", text: a[x - 1] });
    x -= 1;
    y -= 1;
  }
  return ops.reverse();
}

/**
 * Group changes for reading: a deletion and an insertion separated only by spaces read as
 * one replaced phrase ("[-old words-][+new words+]"), and neighbours of one kind merge.
 */
function tidy(ops) {
  const out = [];
  let del = "";
  let ins = "";
  let pendingSpace = "";
  const flush = () => {
    if (del) out.push({ op: "del", text: del });
    if (ins) out.push({ op: "ins", text: ins });
    del = "";
    ins = "";
  };
  const pushEq = (text) => {
    const last = out[out.length - 1];
    if (last && last.op === "eq") last.text += text;
    else out.push({ op: "eq", text });
  };
  for (let i = 0; i < ops.length; i += 1) {
    const { op, text } = ops[i];
    if (op === "eq") {
      // Only a space inside a replaced phrase folds in: it then belongs to both sides.
      const replacing = del && ins;
      const nextIsChange = ops[i + 1] && ops[i + 1].op !== "eq";
      if (replacing && nextIsChange && /^\s+$/.test(text)) {
        pendingSpace += text;
        continue;
      }
      flush();
      pushEq(pendingSpace + text);
      pendingSpace = "";
    } else {
      if (pendingSpace) {
        del += pendingSpace;
        ins += pendingSpace;
        pendingSpace = "";
      }
      if (op === "del") del += text;
      else ins += text;
    }
  }
  flush();
  if (pendingSpace) pushEq(pendingSpace);
  return out;
}

/**
 * The word-level changes from `before` to `after`: a list of {op: "eq"|"del"|"ins", text}
 * whose "eq"+"del" texts rebuild `before` and "eq"+"ins" texts rebuild `after`.
 */
export function diffWords(before, after) {
  const a = tokenize(before);
  const b = tokenize(after);
  let start = 0;
  while (start < a.length && start < b.length && a[start] === b[start]) start += 1;
  let endA = a.length;
  let endB = b.length;
  while (endA > start && endB > start && a[endA - 1] === b[endB - 1]) {
    endA -= 1;
    endB -= 1;
  }
  const middleA = a.slice(start, endA);
  const middleB = b.slice(start, endB);
  const middle = myers(middleA, middleB) ?? [
    ...middleA.map((text) => ({ op: "del", text })),
    ...middleB.map((text) => ({ op: "ins", text })),
  ];
  const ops = [
    ...a.slice(0, start).map((text) => ({ op: "eq", text })),
    ...middle,
    ...a.slice(endA).map((text) => ({ op: "eq", text })),
  ];
  return tidy(ops);
}

/** Counts of changed words, for a one-line summary ("3 words added, 1 removed"). */
export function changeCounts(parts) {
  const words = (text) => (text.match(/[\p{L}\p{N}]+/gu) ?? []).length;
  let added = 0;
  let removed = 0;
  for (const part of parts) {
    if (part.op === "ins") added += words(part.text);
    if (part.op === "del") removed += words(part.text);
  }
  return { added, removed };
}
