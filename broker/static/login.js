// dyadsync room console: the login form (the project's own code).
"use strict";
document.getElementById("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const err = document.getElementById("login-error");
  err.textContent = "";
  const body = JSON.stringify({
    user: document.getElementById("user").value,
    password: document.getElementById("password").value,
  });
  try {
    const r = await fetch("/api/login", {method: "POST", headers: {"Content-Type": "application/json", "X-Dyadsync": "1"},
                                          body, credentials: "same-origin"});
    if (r.ok) { window.location.href = "/"; return; }
    const data = await r.json().catch(() => ({}));
    err.textContent = data.detail || ("login failed (" + r.status + ")");
  } catch (e) {
    err.textContent = "the hub does not answer: " + e;
  }
});
