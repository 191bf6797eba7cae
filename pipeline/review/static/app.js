// CRAV QA review page: filters, keyboard shortcuts, verdicts, seed picking.
// Data reaches this script only as JSON (the #crav-data block) and is written with textContent, never as HTML.
"use strict";

(function () {
  const ORDER_KEY = "crav-qa-order";   // sessionStorage: lesion URLs in the order of the filtered list
  const FLASH_KEY = "crav-qa-flash";   // sessionStorage: message shown after a reload
  const REVIEWER_KEY = "crav-qa-reviewer";  // localStorage: the reviewer's name, remembered
  const TO_REVIEW = new Set(["pending", "needs_review"]);

  const NOT_TEXT = new Set(["checkbox", "radio", "button", "submit", "reset"]);

  function typing(ev) {  // keys typed into a text field are text, not shortcuts
    const t = ev.target;
    if (!(t instanceof HTMLElement)) return false;
    if (t instanceof HTMLInputElement) return !NOT_TEXT.has(t.type);
    return t.isContentEditable || t.tagName === "TEXTAREA" || t.tagName === "SELECT";
  }

  function toggleHelp() {
    const help = document.getElementById("help");
    if (help) help.hidden = !help.hidden;
  }

  function storedOrder() {
    try {
      const order = JSON.parse(sessionStorage.getItem(ORDER_KEY) || "null");
      return Array.isArray(order) ? order.filter((u) => typeof u === "string") : null;
    } catch (e) {
      return null;
    }
  }

  // ------------------------------------------------------------ list page
  function listPage() {
    const rows = Array.from(document.querySelectorAll("#lesions tbody tr"));
    const status = document.getElementById("f-status");
    const outcome = document.getElementById("f-outcome");
    const query = document.getElementById("f-q");
    const shown = document.getElementById("shown");
    let selected = -1;

    function visible() {
      return rows.filter((r) => !r.hidden);
    }

    function apply() {
      const s = status.value, o = outcome.value, q = query.value.trim().toLowerCase();
      for (const r of rows) {
        r.hidden = (s && r.dataset.status !== s) || (o && r.dataset.outcome !== o) ||
          (q && !r.dataset.text.includes(q));
      }
      const params = new URLSearchParams();
      if (s) params.set("status", s);
      if (o) params.set("outcome", o);
      if (q) params.set("q", q);
      const search = params.toString();
      history.replaceState(null, "", search ? "?" + search : location.pathname);
      sessionStorage.setItem(ORDER_KEY, JSON.stringify(visible().map((r) => r.dataset.url)));
      shown.textContent = visible().length + " shown";
      select(-1);
    }

    function select(i) {
      const vis = visible();
      rows.forEach((r) => r.classList.remove("selected"));
      selected = Math.max(-1, Math.min(i, vis.length - 1));
      if (selected >= 0) {
        vis[selected].classList.add("selected");
        vis[selected].scrollIntoView({block: "nearest"});
      }
    }

    for (const el of [status, outcome]) el.addEventListener("change", apply);
    query.addEventListener("input", apply);
    document.getElementById("filters").addEventListener("submit", (ev) => { ev.preventDefault(); apply(); });
    for (const a of document.querySelectorAll("a.count")) {
      a.addEventListener("click", (ev) => {
        ev.preventDefault();
        status.value = status.value === a.dataset.status ? "" : a.dataset.status;
        apply();
      });
    }
    for (const r of rows) {
      r.addEventListener("click", (ev) => {
        if (!(ev.target instanceof HTMLAnchorElement)) location.href = r.dataset.url;
      });
    }
    apply();

    document.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape" && typing(ev)) { ev.target.blur(); return; }
      if (typing(ev) || ev.ctrlKey || ev.metaKey || ev.altKey) return;
      const vis = visible();
      if (ev.key === "j") select(selected + 1);
      else if (ev.key === "k") select(selected <= 0 ? 0 : selected - 1);
      else if ((ev.key === "Enter" || ev.key === "o") && selected >= 0) location.href = vis[selected].dataset.url;
      else if (ev.key === "n") {
        const next = vis.find((r) => TO_REVIEW.has(r.dataset.status));
        if (next) location.href = next.dataset.url;
        else shown.textContent = vis.length + " shown; none left to review";
      } else if (ev.key === "?") toggleHelp();
      else return;
      ev.preventDefault();
    });
  }

  // ------------------------------------------------------------ lesion page
  function lesionPage() {
    const data = JSON.parse(document.getElementById("crav-data").textContent);
    const csrf = document.querySelector('meta[name="crav-csrf"]').content;
    const statusOf = new Map(data.order.map((o) => [o.url, o.status]));
    let order = storedOrder();
    if (!order || !order.includes(data.url)) order = data.order.map((o) => o.url);
    const here = order.indexOf(data.url);
    const message = document.getElementById("message");
    const flash = document.getElementById("flash");
    const comment = document.getElementById("comment");
    const seed = ["seed-x", "seed-y", "seed-z"].map((id) => document.getElementById(id));
    const reviewer = document.getElementById("reviewer");
    if (!reviewer.value) reviewer.value = localStorage.getItem(REVIEWER_KEY) || "";
    let busy = false;

    function say(text, isError) {
      message.textContent = text;
      message.hidden = !text;
      message.classList.toggle("error", Boolean(isError));
    }

    const shownFlash = sessionStorage.getItem(FLASH_KEY);
    if (shownFlash) {
      sessionStorage.removeItem(FLASH_KEY);
      flash.textContent = shownFlash;
      flash.hidden = false;
    }

    const prev = document.getElementById("prev"), next = document.getElementById("next");
    if (here > 0) { prev.href = order[here - 1]; prev.hidden = false; }
    if (here >= 0 && here < order.length - 1) { next.href = order[here + 1]; next.hidden = false; }
    document.getElementById("position").textContent = here >= 0 ? (here + 1) + " of " + order.length : "";

    function go(offset) {
      const target = order[here + offset];
      if (target) location.href = target;
      else say(offset > 0 ? "This is the last lesion of the list." : "This is the first lesion of the list.");
    }

    function nextToReview() {
      for (let step = 1; step < order.length; step++) {
        const url = order[(here + step) % order.length];
        if (TO_REVIEW.has(statusOf.get(url))) { location.href = url; return; }
      }
      say("No other lesion of the list is left to review.");
    }

    function corrections() {
      const exclude = Array.from(document.querySelectorAll('input[name="exclude"]:checked')).map((c) => c.value);
      const texts = seed.map((el) => el.value.trim());
      if (texts.every((t) => t === "")) return {exclude_visits: exclude, seed_mm: null};
      const values = texts.map(Number);
      if (texts.some((t) => t === "") || values.some((v) => !Number.isFinite(v))) {
        throw new Error("The seed needs three numbers x, y, z in mm (or none).");
      }
      return {exclude_visits: exclude, seed_mm: values};
    }

    async function submit(status) {
      if (busy) return;
      let body;
      try {
        body = {patient_id: data.patient_id, lesion_id: data.lesion_id, status: status, result_key: data.result_key,
                comment: comment.value, reviewer: reviewer.value,
                // an acceptance keeps the corrections in force: only a rejection sends them
                corrections: status === "rejected" ? corrections() : null};
      } catch (e) {
        say(e.message, true);
        return;
      }
      if (status === "rejected" && !comment.value.trim()) {
        say("A rejection needs a comment: type why, then Ctrl+Enter.", true);
        comment.focus();
        return;
      }
      busy = true;
      say("Saving...");
      try {
        const resp = await fetch("/api/review", {
          method: "POST", credentials: "same-origin",
          headers: {"Content-Type": "application/json", "X-CRAV-CSRF": csrf},
          body: JSON.stringify(body),
        });
        const answer = await resp.json().catch(() => ({error: "the server answered " + resp.status}));
        if (!resp.ok) { say(answer.error || ("the server answered " + resp.status), true); return; }
        sessionStorage.setItem(FLASH_KEY, answer.message);
        localStorage.setItem(REVIEWER_KEY, reviewer.value);
        location.reload();
      } catch (e) {
        say("The server could not be reached: is crav qa still running?", true);
      } finally {
        busy = false;
      }
    }

    document.getElementById("accept").addEventListener("click", () => submit("accepted"));
    document.getElementById("reject").addEventListener("click", () => submit("rejected"));
    comment.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); submit("rejected"); }
    });
    document.getElementById("seed-clear").addEventListener("click", () => {
      seed.forEach((el) => { el.value = ""; });
      drawMarkers();
    });
    seed.forEach((el) => el.addEventListener("change", drawMarkers));

    document.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape" && typing(ev)) { ev.target.blur(); return; }
      if (typing(ev) || ev.ctrlKey || ev.metaKey || ev.altKey) return;
      if (ev.key === "j") go(1);
      else if (ev.key === "k") go(-1);
      else if (ev.key === "n") nextToReview();
      else if (ev.key === "a") submit("accepted");
      else if (ev.key === "r") {
        if (comment.value.trim()) submit("rejected");
        else { comment.focus(); say("Type why you reject, then Ctrl+Enter (or the Reject button)."); }
      } else if (ev.key === "u") location.href = "/";
      else if (ev.key === "?") toggleHelp();
      else return;
      ev.preventDefault();
    });

    // --- seed picking on the J0 overlay: pixel (col c, row r) of a panel = origin + r * row_step + c * col_step
    const img = document.getElementById("j0-overlay");
    const pick = document.getElementById("j0-pick");
    const geometry = data.geometry;

    function dot(a, b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }

    function panelAt(px, py) {
      return geometry.panels.find((p) => px >= p.x0_px && px < p.x0_px + p.width_px &&
        py >= p.y0_px && py < p.y0_px + p.height_px);
    }

    function drawMarkers() {
      if (!img || !geometry || !img.naturalWidth) return;
      pick.querySelectorAll(".marker").forEach((m) => m.remove());
      const texts = seed.map((el) => el.value.trim());
      const s = texts.map(Number);
      if (texts.some((t) => t === "") || s.some((v) => !Number.isFinite(v))) return;
      const scale = img.getBoundingClientRect().width / img.naturalWidth;
      for (const p of geometry.panels) {
        const d = [0, 1, 2].map((i) => s[i] - p.origin_mm[i]);
        const rr = dot(p.row_step_mm, p.row_step_mm), cc = dot(p.col_step_mm, p.col_step_mm);
        const rc = dot(p.row_step_mm, p.col_step_mm), det = rr * cc - rc * rc;
        if (!det) continue;
        const rd = dot(p.row_step_mm, d), cd = dot(p.col_step_mm, d);
        const r = (cc * rd - rc * cd) / det, c = (rr * cd - rc * rd) / det;
        if (r < -0.5 || c < -0.5 || r > p.height_px - 0.5 || c > p.width_px - 0.5) continue;
        const m = document.createElement("span");
        m.className = "marker";
        m.title = "vertebra seed";
        m.style.left = ((p.x0_px + c + 0.5) * scale) + "px";
        m.style.top = ((p.y0_px + r + 0.5) * scale) + "px";
        pick.appendChild(m);
      }
    }

    if (img && geometry) {
      img.classList.add("pickable");
      img.addEventListener("click", (ev) => {
        const rect = img.getBoundingClientRect();
        const px = (ev.clientX - rect.left) * img.naturalWidth / rect.width;
        const py = (ev.clientY - rect.top) * img.naturalHeight / rect.height;
        const p = panelAt(px, py);
        if (!p) { say("Click inside an image panel of the J0 overlay to set the seed."); return; }
        const c = px - p.x0_px - 0.5, r = py - p.y0_px - 0.5;
        const mm = [0, 1, 2].map((i) => p.origin_mm[i] + r * p.row_step_mm[i] + c * p.col_step_mm[i]);
        seed.forEach((el, i) => { el.value = mm[i].toFixed(1); });
        say("Seed set from the " + (p.view || "image") + " panel; reject to have the lesion re-processed with it.");
        drawMarkers();
      });
      if (img.complete) drawMarkers(); else img.addEventListener("load", drawMarkers);
      window.addEventListener("resize", drawMarkers);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const page = document.body.dataset.page;
    if (page === "list") listPage();
    else if (page === "lesion") lesionPage();
    else document.addEventListener("keydown", (ev) => { if (!typing(ev) && ev.key === "?") toggleHelp(); });
  });
})();
