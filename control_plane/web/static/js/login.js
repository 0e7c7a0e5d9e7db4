// The login page. The server fills nothing in: the page takes `next` from ?next= or, when the server
// answered a page's own URL with this form (401), from that URL; it shows ?error= when given, and the
// outcome of a refused POST /login (answered 401 at /login; GET /login is always 200) and of a token whose
// principal may not read (any page answered 403 with this form).

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

const error = params.get("error");
const [nav] = performance.getEntriesByType("navigation");
if (error) show(error);
else if (nav && nav.responseStatus === 403) {  // a valid token whose principal lacks `read`, anywhere
  show("This token's principal may not read the cluster (its ACL grant lacks the read action).");
} else if (nav && location.pathname === "/login" && nav.responseStatus === 401) {
  show("That token was not accepted.");
}
