// llama-supervisor console: keeps the server-rendered page live from /ui/events and sends the
// action buttons' POSTs. Every value from the daemon is put in place with textContent, never as HTML.
"use strict";
(function () {
  const page = document.body.dataset.page;
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  const notice = document.getElementById("notice");

  function h(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) { if (v !== null && v !== undefined) e.setAttribute(k, v); }
    for (const c of children) { if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c)); }
    return e;
  }
  function say(text, error) { notice.textContent = text; notice.classList.toggle("error", !!error); }
  function cap(s) { return s.charAt(0).toUpperCase() + s.slice(1); }

  function meter(bar, cls) {
    if (!bar) return null;
    return h("div", { class: cls }, h("meter", { min: 0, max: bar.max, value: bar.value, "aria-label": bar.label }, bar.label),
      h("span", {}, bar.label));
  }
  function card(m) {
    const dl = h("dl");
    for (const [label, value] of m.fields) { dl.append(h("dt", {}, label), h("dd", {}, value)); }
    const actions = h("div", { class: "actions" });
    for (const a of m.actions) {
      actions.append(h("button", { type: "button", "data-action": a, "data-model": m.name, "aria-label": cap(a) + " " + m.name }, cap(a)));
    }
    return h("article", { class: "model", "data-model": m.name, "data-state": m.state },
      h("h2", {}, h("span", { class: "name" }, m.name), " ", h("span", { class: "state s-" + m.state.toLowerCase() }, m.state)),
      m.reason ? h("p", { class: "reason" }, m.reason) : null, dl, meter(m.bar, "bar"), actions);
  }
  function keepFocus(container, render) {
    const f = document.activeElement;
    const key = f && f.dataset && f.dataset.action ? [f.dataset.action, f.dataset.model] : null;
    render();
    if (key) {
      const again = container.querySelector('button[data-action="' + key[0] + '"][data-model="' + CSS.escape(key[1]) + '"]');
      if (again) again.focus();
    }
  }
  function rows(tbody, data) {
    tbody.replaceChildren(...data.map(r => h("tr", {}, ...r.map(v => h("td", {}, v)))));
  }

  // Make `old` look like `fresh`, keeping every node whose place and kind did not change: a changed
  // text changes in its text node, a changed attribute on its element.
  function morph(old, fresh) {
    if (old.nodeType !== fresh.nodeType || old.nodeName !== fresh.nodeName) { old.replaceWith(fresh); return fresh; }
    if (old.nodeType === Node.TEXT_NODE) {
      if (old.nodeValue !== fresh.nodeValue) old.nodeValue = fresh.nodeValue;
      return old;
    }
    if (old.nodeType !== Node.ELEMENT_NODE || old.isEqualNode(fresh)) return old;
    for (const a of Array.from(old.attributes)) { if (!fresh.hasAttribute(a.name)) old.removeAttribute(a.name); }
    for (const a of Array.from(fresh.attributes)) { if (old.getAttribute(a.name) !== a.value) old.setAttribute(a.name, a.value); }
    const mine = Array.from(old.childNodes), theirs = Array.from(fresh.childNodes);
    theirs.forEach((c, i) => { if (i < mine.length) morph(mine[i], c); else old.append(c); });
    for (const extra of mine.slice(theirs.length)) extra.remove();
    return old;
  }
  // A card changes in place. Its buttons are replaced only when the actions offered change, and then the
  // whole card, so a focused button never turns into another action under the keyboard; otherwise every
  // part (title, reason, fields, meter) is morphed: the nodes stay, only what differs changes. So a button
  // keeps its focus while the uptime ticks, a reason being selected for copying stays selected, and a
  // screen reader is not told again about text that did not change.
  function update(old, m) {
    const fresh = card(m);
    const actions = old.querySelector(".actions");
    if (actions.textContent !== fresh.querySelector(".actions").textContent) {
      keepFocus(old, () => old.replaceWith(fresh));
      return fresh;
    }
    old.dataset.state = m.state;
    const key = part => part.tagName + "." + part.className;
    const had = new Map(Array.from(old.children).filter(p => p !== actions).map(p => [key(p), p]));
    let next = actions;
    for (const part of Array.from(fresh.children).filter(p => !p.classList.contains("actions")).reverse()) {
      const mine = had.get(key(part));
      had.delete(key(part));
      const node = mine ? morph(mine, part) : part;
      if (node.nextElementSibling !== next) next.before(node);
      next = node;
    }
    for (const gone of had.values()) gone.remove();
    return old;
  }
  const handlers = {
    models(view) {
      const box = document.getElementById("models");
      const old = new Map(Array.from(box.querySelectorAll("article.model")).map(a => [a.dataset.model, a]));
      const next = view.models.map(m => old.has(m.name) ? update(old.get(m.name), m) : card(m));
      if (!next.length) next.push(h("p", {}, "No models."));
      next.forEach((node, i) => { if (box.children[i] !== node) box.insertBefore(node, box.children[i] || null); });
      while (box.children.length > next.length) box.lastElementChild.remove();
      const oldBudget = document.querySelector(".budget");
      const freshBudget = meter(view.budget, "bar budget");
      if (oldBudget && freshBudget) oldBudget.replaceWith(freshBudget);
    },
    activity(view) {
      rows(document.getElementById("inflight"), view.inflight);
      rows(document.getElementById("done"), view.done);
    },
    events(data) { rows(document.getElementById("events"), data); },
    log(lines) {
      const pre = document.getElementById("log");
      if (!pre) return;
      const stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.append(lines.join("\n") + "\n");
      while (pre.childNodes.length > 2000) pre.removeChild(pre.firstChild);
      if (stick) pre.scrollTop = pre.scrollHeight;
    },
  };

  if (page && page !== "host" && window.EventSource) {
    const q = new URLSearchParams({ page: page });
    const log = document.getElementById("log");
    if (log) q.set("model", log.dataset.model);
    const es = new EventSource("/ui/events?" + q.toString());
    for (const kind of Object.keys(handlers)) {
      es.addEventListener(kind, ev => handlers[kind](JSON.parse(ev.data)));
    }
  }

  document.addEventListener("click", async ev => {
    const b = ev.target.closest("button[data-action]");
    if (!b) return;
    const action = b.dataset.action, model = b.dataset.model;
    say(cap(action) + " " + model + "…");
    try {
      const r = await fetch("/ui/api/models/" + encodeURIComponent(model) + "/" + encodeURIComponent(action), {
        method: "POST", credentials: "same-origin",
        headers: { "content-type": "application/json", "x-csrf-token": csrf }, body: "{}",
      });
      const body = await r.json().catch(() => ({}));
      if (r.status === 401) say("Refused: " + (body.error || "no authority"), true);
      else if (!r.ok) say(cap(action) + " " + model + ": " + (body.error || body.message || r.status), true);
      else say(body.message || (cap(action) + " " + model + ": done"));
    } catch (e) { say(cap(action) + " " + model + ": " + e, true); }
  });
})();
