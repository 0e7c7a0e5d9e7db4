// The UI's routes (the same list the server serves index.html for: docs/http-api.md, "UI routes").

import { overviewPage } from "./pages/overview.js";
import { agentsPage, agentPage } from "./pages/agents.js";
import { frameworksPage, frameworkPage } from "./pages/frameworks.js";
import { tasksPage } from "./pages/tasks.js";
import { taskPage } from "./pages/task.js";
import { eventsPage } from "./pages/events.js";
import { timeTravelPage } from "./pages/timetravel.js";
import { servicesPage, servicePage } from "./pages/services.js";

export const routes = [
  { pattern: /^\/$/, page: overviewPage, nav: "overview", title: "Overview" },
  { pattern: /^\/agents\/?$/, page: agentsPage, nav: "agents", title: "Agents" },
  { pattern: /^\/agents\/([^/]+)$/, page: agentPage, nav: "agents", title: "Agent" },
  { pattern: /^\/frameworks\/?$/, page: frameworksPage, nav: "frameworks", title: "Frameworks" },
  { pattern: /^\/frameworks\/([^/]+)$/, page: frameworkPage, nav: "frameworks", title: "Framework" },
  { pattern: /^\/tasks\/?$/, page: tasksPage, nav: "tasks", title: "Tasks" },
  { pattern: /^\/tasks\/([^/]+)$/, page: taskPage, nav: "tasks", title: "Task" },
  { pattern: /^\/events\/?$/, page: eventsPage, nav: "events", title: "Event log" },
  { pattern: /^\/timetravel\/?$/, page: timeTravelPage, nav: "timetravel", title: "Time travel" },
  { pattern: /^\/services\/?$/, page: servicesPage, nav: "services", title: "Services" },
  { pattern: /^\/services\/([^/]+)$/, page: servicePage, nav: "services", title: "Service" },
];
