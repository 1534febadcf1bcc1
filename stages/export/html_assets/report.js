// sapnet report.html: gallery of pseudo labels, sorted and filtered in the browser (no network, no library).
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("report-data").textContent);
  const PAGE = 40;
  const state = { sort: "conf", selector: DATA.primary, cat: "", filter: "", shown: PAGE };
  const el = (tag, attrs, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
    }
    for (const k of kids) e.append(k);
    return e;
  };
  const fmt = (v) => (v === null || v === undefined ? "n/a" : Number.isInteger(v) ? String(v) : Number(v).toFixed(3));
  const catName = (c) => DATA.categories[String(c)] || String(c);

  const SORTS = {
    conf: ["lowest confidence first", (a, b) => num(stat(a, "conf"), 1e9) - num(stat(b, "conf"), 1e9)],
    dis: ["selectors disagree most", (a, b) => b.dis - a.dis],
    n: ["most objects", (a, b) => b.n - a.n],
    file: ["file name", (a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : 0)],
  };
  if (DATA.hasGT) {
    SORTS.miou = ["lowest mask mIoU first", (a, b) => num(stat(a, "miou"), 9) - num(stat(b, "miou"), 9)];
    SORTS.g = ["most group errors", (a, b) => stat(b, "g") - stat(a, "g")];
    SORTS.l = ["most local errors", (a, b) => stat(b, "l") - stat(a, "l")];
  }
  const FILTERS = { "": "all images", dis: "selectors disagree (> 0.2)" };
  if (DATA.hasGT) {
    FILTERS.g = "with group errors";
    FILTERS.l = "with local errors";
    FILTERS.any = "with any error";
  }
  function num(v, dflt) { return v === null || v === undefined ? dflt : v; }
  function stat(im, key) { return im.stats[state.selector][key]; }

  function select(id, label, options, value, onchange) {
    const s = el("select", { id: id });
    for (const [v, text] of options) {
      const o = el("option", { value: v, text: text });
      if (v === value) o.selected = true;
      s.append(o);
    }
    s.addEventListener("change", () => { onchange(s.value); state.shown = PAGE; render(); });
    return el("label", {}, label + " ", s);
  }

  function controls() {
    const box = document.getElementById("controls");
    box.append(select("sort", "sort:", Object.entries(SORTS).map(([k, v]) => [k, v[0]]), state.sort,
      (v) => { state.sort = v; }));
    box.append(select("selector", "by selector:", DATA.selectors.map((s) => [s, s]), state.selector,
      (v) => { state.selector = v; }));
    const cats = [["", "all classes"]];
    const used = new Set(DATA.objects.map((o) => o.cat));
    Object.keys(DATA.categories).filter((c) => used.has(Number(c)))
      .sort((a, b) => catName(a).localeCompare(catName(b))).forEach((c) => cats.push([c, catName(c)]));
    box.append(select("cat", "class:", cats, state.cat, (v) => { state.cat = v; }));
    box.append(select("filter", "show:", Object.entries(FILTERS), state.filter, (v) => { state.filter = v; }));
  }

  function visible() {
    let ims = DATA.images.filter((im) => im.n > 0);
    if (state.cat !== "") ims = ims.filter((im) => im.cats.includes(Number(state.cat)));
    const f = state.filter;
    if (f === "dis") ims = ims.filter((im) => im.objs.some((r) => DATA.objects[r].dis > 0.2));
    if (f === "g") ims = ims.filter((im) => stat(im, "g") > 0);
    if (f === "l") ims = ims.filter((im) => stat(im, "l") > 0);
    if (f === "any") ims = ims.filter((im) => stat(im, "g") + stat(im, "l") > 0);
    return ims.slice().sort(SORTS[state.sort][1]);
  }

  function objectRow(o) {
    const head = el("div", { class: "head" });
    head.append(el("b", { text: "#" + o.id + " " + catName(o.cat) }));
    const bits = [];
    for (const s of DATA.selectors) {
      let t = s + ": score " + fmt(o.score[s]);
      if (o.iou) t += ", IoU " + fmt(o.iou[s]);
      const span = el("span", { text: " | " + t });
      if (o.err && o.err[s]) span.append(el("span", { class: "err-" + o.err[s], text: " " + o.err[s] + " error" }));
      bits.push(span);
    }
    head.append(...bits, el("span", { text: " | disagreement " + fmt(o.dis) }));
    const row = el("div", { class: "obj", "data-ann": String(o.id) }, head);
    if (o.strip) row.append(el("img", { class: "strip", src: o.strip, loading: "lazy", alt: "proposals of " + o.id }));
    if (o.pick) {
      const t = el("table", { class: "props" });
      const hr = el("tr", {}, el("th", { text: "proposal" }));
      const pr = el("tr", {}, el("th", { text: "picked by" }));
      for (let j = 0; j < DATA.M; j++) {
        hr.append(el("td", { text: String(j) }));
        const cell = el("td", {});
        for (const [s, idx] of Object.entries(o.pick)) {
          if (idx === j) cell.append(el("span", { class: "badge" + (s === DATA.primary ? " primary" : ""), text: s }));
        }
        pr.append(cell);
      }
      t.append(hr, pr);
      for (const [k, vals] of Object.entries(o.prop || {})) {
        const tr = el("tr", {}, el("th", { text: k }));
        vals.forEach((v) => tr.append(el("td", { text: fmt(v) })));
        t.append(tr);
      }
      row.append(t);
    }
    return row;
  }

  function card(im) {
    const c = el("div", { class: "card", "data-image": String(im.id) });
    const s = im.stats[state.selector];
    let txt = im.n + " object(s); classes: " + im.cats.map(catName).join(", ") +
      "; lowest confidence (" + state.selector + ") " + fmt(s.conf) + "; disagreement " + fmt(im.dis);
    if (DATA.hasGT) txt += "; mIoU " + fmt(s.miou) + "; group errors " + s.g + "; local errors " + s.l;
    c.append(el("h3", { text: im.file + " (id " + im.id + ")" }), el("div", { class: "stats", text: txt }));
    const tiles = el("div", { class: "tiles" });
    for (const sel of DATA.selectors) {
      if (!im.thumbs[sel]) continue;
      tiles.append(el("figure", { class: "tile" },
        el("img", { src: im.thumbs[sel], loading: "lazy", alt: sel + " on " + im.file }),
        el("figcaption", { text: sel })));
    }
    c.append(tiles);
    const objs = el("details", { class: "objects" }, el("summary", { text: "objects and their proposals" }));
    objs.addEventListener("toggle", () => {
      if (objs.open && objs.childElementCount === 1) im.objs.forEach((r) => objs.append(objectRow(DATA.objects[r])));
    }, { once: false });
    c.append(objs);
    return c;
  }

  function render() {
    const ims = visible();
    const g = document.getElementById("gallery");
    g.replaceChildren(...ims.slice(0, state.shown).map(card));
    document.getElementById("count").textContent =
      "showing " + Math.min(state.shown, ims.length) + " of " + ims.length + " image(s)";
    document.getElementById("more").hidden = state.shown >= ims.length;
  }

  document.getElementById("more").addEventListener("click", () => { state.shown += PAGE; render(); });
  controls();
  render();
})();
