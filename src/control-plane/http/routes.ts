// The reference control plane's HTTP routes: method, path (under /api/v1), auth rule, handler.
import type { Route } from "./router.js";
import { listDevices, listRunnerDevices } from "./device-routes.js";
import { cancelJob, getJob, listJobLogs, listJobs, submitJob } from "./job-routes.js";
import {
  createRegistrationToken,
  deleteRunner,
  getHealth,
  listRunners,
  pauseRunner,
  refusePlainChannelRequest,
  registerRunner,
  repairRunner,
  resumeRunner,
  revokeRunner,
  setRunnerLabels,
  unregisterRunner,
  verifyRunner,
} from "./runner-routes.js";

export const ROUTES: readonly Route[] = [
  { method: "GET", path: "/health", auth: "none", handle: getHealth },
  // Load balancers' health checks often send HEAD: the same answer, headers only.
  { method: "HEAD", path: "/health", auth: "none", handle: getHealth },
  // The channel itself is served on the HTTP server's `upgrade` event; this answers the rest.
  { method: "GET", path: "/channel", auth: "none", handle: refusePlainChannelRequest },
  { method: "POST", path: "/runners/register", auth: "registration", handle: registerRunner },
  { method: "POST", path: "/runners/verify", auth: "bearer", handle: verifyRunner },
  { method: "POST", path: "/runners/repair", auth: "bearer", handle: repairRunner },
  { method: "POST", path: "/runners/unregister", auth: "bearer", handle: unregisterRunner },
  { method: "POST", path: "/admin/registration-tokens", auth: "admin", handle: createRegistrationToken },
  { method: "GET", path: "/admin/runners", auth: "admin", handle: listRunners },
  { method: "POST", path: "/admin/runners/:id/revoke", auth: "admin", handle: revokeRunner },
  { method: "POST", path: "/admin/runners/:id/pause", auth: "admin", handle: pauseRunner },
  { method: "POST", path: "/admin/runners/:id/resume", auth: "admin", handle: resumeRunner },
  { method: "PUT", path: "/admin/runners/:id/labels", auth: "admin", handle: setRunnerLabels },
  { method: "DELETE", path: "/admin/runners/:id", auth: "admin", handle: deleteRunner },
  { method: "POST", path: "/admin/jobs", auth: "admin", handle: submitJob },
  { method: "GET", path: "/admin/jobs", auth: "admin", handle: listJobs },
  { method: "GET", path: "/admin/jobs/:id", auth: "admin", handle: getJob },
  { method: "GET", path: "/admin/jobs/:id/logs", auth: "admin", handle: listJobLogs },
  { method: "POST", path: "/admin/jobs/:id/cancel", auth: "admin", handle: cancelJob },
  { method: "GET", path: "/admin/runners/:id/devices", auth: "admin", handle: listRunnerDevices },
  { method: "GET", path: "/admin/devices", auth: "admin", handle: listDevices },
];
