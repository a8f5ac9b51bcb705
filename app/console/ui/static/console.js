// The console's one script (the CSP allows no inline script): each UTC time is shown
// again in this browser's zone, and the dead letters' "select all" box ticks every row.
// Every page works without it.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  const format = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short",
  });
  for (const time of document.querySelectorAll("time[datetime]")) {
    const when = new Date(time.getAttribute("datetime"));
    if (Number.isNaN(when.getTime())) continue;
    const local = document.createElement("span");
    local.className = "local";
    local.textContent = format.format(when);
    local.title = `in ${zone}`;
    time.after(local);
  }
  for (const all of document.querySelectorAll("input.select-all")) {
    all.addEventListener("change", () => {
      for (const box of all.form.querySelectorAll('input[name="delivery"]')) {
        box.checked = all.checked;
      }
    });
  }
});
