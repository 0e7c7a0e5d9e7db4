// The login page. The server fills nothing in: the page takes `next` from ?next= or, when the server
// answered a page's own URL with this form (401), from that URL; it shows ?error= when given, and the
// outcome of a refused POST /login (an unknown token: 401 at /login; GET /login is always 200) and of a
// token whose principal may not read (POST /login or any page answered 403 with this form).

const params = new URLSearchParams(location.search);
const nextInput = document.getElementById("next");
const box = document.getElementById("login-error");
const safe = (path) => path && path.startsWith("/") && !path.startsWith("//") && !path.startsWith("/login");

let next = params.get("next");
if (!safe(next) && location.pathname !== "/login") next = location.pathname + location.search;
if (!safe(next)) next = sessionStorage.getItem("tessera.login.next");
if (safe(next)) nextInput.value = next;

document.querySelector("form").addEventListener("submit", () => {
  sessionStorage.setItem("tessera.login.next", nextInput.value);
});

function show(text) {
  box.textContent = text;
  box.hidden = false;
}

// Only fixed texts are shown: `?error=` is a code looked up here, never text put on the page.
const MESSAGES = {
  unauthenticated: "That token was not accepted.",
  permission_denied: "This token's principal may not read the cluster (its ACL grant lacks the read action).",
};
const code = params.get("error");
const [nav] = performance.getEntriesByType("navigation");
if (code) show(MESSAGES[code] || "Sign in again.");
else if (nav && nav.responseStatus === 403) {  // a known principal without `read`: POST /login or any page
  show(MESSAGES.permission_denied);
} else if (nav && location.pathname === "/login" && nav.responseStatus === 401) {  // an unknown token
  show(MESSAGES.unauthenticated);
}
