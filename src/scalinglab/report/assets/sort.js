/* Click a column header of a .sortable table to sort by it (again: reverse). Cells sort by
   their data-sort number when they have one, else by text; empty cells stay last. A link
   ending in #sort=TABLE:COLUMN or #sort=TABLE:COLUMN:desc opens the page sorted that way. */
(function () {
  function key(cell) {
    var s = cell ? cell.getAttribute("data-sort") : null;
    if (s !== null) {
      var x = parseFloat(s);
      return isNaN(x) ? null : x;
    }
    var t = cell ? cell.textContent.trim() : "";
    return t === "" ? null : t.toLowerCase();
  }
  function compare(a, b) {
    if (typeof a === "number" && typeof b === "number") return a - b;
    return String(a).localeCompare(String(b), undefined, { numeric: true });
  }
  function sortBy(table, th, desc) {
    var col = Array.prototype.indexOf.call(th.parentNode.children, th);
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (r1, r2) {
      var a = key(r1.cells[col]), b = key(r2.cells[col]);
      if (a === null || b === null) return (a === null) - (b === null);
      return desc ? compare(b, a) : compare(a, b);
    });
    rows.forEach(function (r) { body.appendChild(r); });
    table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", desc ? "descending" : "ascending");
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("thead th").forEach(function (th) {
      th.tabIndex = 0;
      th.title = "sort by this column";
      function go() { sortBy(table, th, th.getAttribute("aria-sort") === "ascending"); }
      th.addEventListener("click", go);
      th.addEventListener("keydown", function (e) { if (e.key === "Enter") go(); });
    });
    table.classList.add("sort-ready");
  });
  var m = /^#sort=([\w-]+):([\w.-]+)(:desc)?$/.exec(window.location.hash);
  if (m) {
    var table = document.getElementById(m[1]);
    var th = table && table.querySelector('thead th[data-col="' + m[2] + '"]');
    if (th) sortBy(table, th, Boolean(m[3]));
  }
  document.documentElement.setAttribute("data-ready", "1");
})();
