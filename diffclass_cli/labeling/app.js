// The labeling page: every answer goes to the server at once; the page keeps no state of its own.
"use strict";
const token = new URLSearchParams(location.search).get("token");
const $ = (id) => document.getElementById(id);
let state = null;
let view = "label";

async function api(path, body) {
  const reply = await fetch(path, {
    method: body === undefined ? "GET" : "POST",
    headers: {"X-Token": token, "Content-Type": "application/json"},
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await reply.json();
  $("error").textContent = reply.ok ? "" : data.error;
  if (!reply.ok) throw new Error(data.error);
  return data;
}

const imageUrl = (row) => `image/${row}?token=${encodeURIComponent(token)}`;

function image(row, alt, cls) {
  const img = document.createElement("img");
  img.src = imageUrl(row);
  img.alt = alt;
  if (cls) img.className = cls;
  return img;
}

function show(name) {
  view = name;
  for (const v of ["label", "check", "fitted"]) $(`${v}-view`).classList.toggle("hidden", v !== name);
}

function render(next) {
  state = next;
  const classes = Object.keys(state.classes);
  $("counts").innerHTML = classes.map((c, i) =>
    `<span>${i < 9 && shortcuts(classes) ? `<kbd>${i + 1}</kbd> ` : ""}${escapeHtml(c)}: ${state.classes[c]}</span>`
  ).join("");
  $("known").innerHTML = classes.map((c) => `<option value="${escapeHtml(c)}">`).join("");
  $("progress").textContent = `${state.labeled} labeled, ${state.pending.length} to go; saved to ${state.labels_table}`;
  $("undo").disabled = !state.can_undo;
  if (view === "label" && state.pending.length === 0) return openCheck();
  if (view !== "label") return;
  const [first, ...rest] = state.pending;
  $("current").src = imageUrl(first.row);
  $("current").alt = first.alt;
  $("current").dataset.row = first.row;
  $("next").replaceChildren(...rest.slice(0, 6).map((p) => image(p.row, p.alt)));
  $("label").focus();
}

// Number keys pick the class of that number, unless class names are numbers themselves (digits).
const shortcuts = (classes) => !classes.some((c) => /^\d+$/.test(c));

function escapeHtml(text) {
  const span = document.createElement("span");
  span.textContent = text;
  return span.innerHTML;
}

async function answer(label) {
  const row = Number($("current").dataset.row);
  $("label").value = "";
  render(await api("api/label", {row, label}));
}

$("answer").addEventListener("submit", (event) => {
  event.preventDefault();
  const label = $("label").value.trim();
  if (label) answer(label);
});

$("label").addEventListener("keydown", async (event) => {
  const empty = $("label").value === "";
  const classes = Object.keys(state.classes);
  const shortcut = shortcuts(classes) && /^[1-9]$/.test(event.key) && Number(event.key) <= classes.length;
  if (empty && shortcut) {
    event.preventDefault();
    answer(classes[Number(event.key) - 1]);
  } else if (event.key === "Escape") {
    event.preventDefault();
    render(await api("api/skip", {row: Number($("current").dataset.row)}));
  } else if (empty && event.key === "Backspace" && state.can_undo) {
    event.preventDefault();
    render(await api("api/undo", {}));
  }
});

$("skip").addEventListener("click", async () => render(await api("api/skip", {row: Number($("current").dataset.row)})));
$("undo").addEventListener("click", async () => render(await api("api/undo", {})));

async function openCheck() {
  show("check");
  const {labels} = await api("api/check");
  $("check-list").replaceChildren(...labels.map((item) => {
    const div = document.createElement("div");
    div.className = "check-item" + (item.flagged ? " flagged" : "");
    div.dataset.row = item.row;
    div.append(image(item.row, item.path, "small"));
    const form = document.createElement("form");
    const input = document.createElement("input");
    input.value = item.label;
    input.setAttribute("list", "known");
    input.className = "fix";
    form.append(input);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      render(await api("api/label", {row: item.row, label: input.value}));
      div.classList.remove("flagged");
    });
    div.append(form);
    if (item.flagged) {
      const note = document.createElement("span");
      note.textContent = `looks like ${item.looks_like}:`;
      div.append(note, ...item.examples.map((row) => image(row, "", "small")));
    }
    return div;
  }));
}

$("fit").addEventListener("click", async () => {
  $("fit").disabled = true;
  try {
    const next = await api("api/fit", {});
    show("fitted");
    render(next);
    const f = next.fitted;
    $("fitted").textContent = `${f.out}: ${f.head} head on ${f.labeled} labeled images of ${f.classes.length} ` +
      `classes${f.reason ? ` (auto: ${f.reason})` : ""}.`;
  } finally {
    $("fit").disabled = false;
  }
});

$("more").addEventListener("click", async () => {
  const next = await api("api/more", {n: Number($("more-n").value) || 10});
  show("label");
  render(next);
});
$("recheck").addEventListener("click", openCheck);

api("api/state").then(render);
