// The login page reads ?next= and ?error= from its own URL (the server fills nothing in).
const params = new URLSearchParams(location.search);
const next = params.get("next");
if (next && next.startsWith("/") && !next.startsWith("//")) document.getElementById("next").value = next;
const error = params.get("error");
if (error) {
  const box = document.getElementById("login-error");
  box.textContent = error;
  box.hidden = false;
}

// After a refused POST /login the server answers this page with 401 (or 403) and no query string:
// the navigation's own status says so.
const [nav] = performance.getEntriesByType("navigation");
if (!error && nav && nav.responseStatus >= 400 && location.pathname === "/login" && document.referrer.includes("/login")) {
  const box = document.getElementById("login-error");
  box.textContent = nav.responseStatus === 403
    ? "This token's principal lacks the read action."
    : "That token was not accepted.";
  box.hidden = false;
}
