// The latest /api/v1/cluster answer (app.js polls it every second for the master bar), shared with the
// pages that show it, and the one way pages navigate (app.js owns the router).

export const cluster = {
  last: null,
  failed: false,
  listeners: new Set(),
  refresh: null, // app.js: ask /api/v1/cluster now
  leaderElected: null, // app.js: show a LeaderElected event's leader now, then ask
  notify(data, err) {
    for (const fn of this.listeners) fn(data, err);
  },
};

// Call fn(data, err) on every answer (and now, with the last one); returns the unsubscribe function.
export function onCluster(fn) {
  cluster.listeners.add(fn);
  if (cluster.last) fn(cluster.last, null);
  return () => cluster.listeners.delete(fn);
}

export function navigate(href) {
  window.dispatchEvent(new CustomEvent("tessera:navigate", { detail: href }));
}
