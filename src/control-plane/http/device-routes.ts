// Handlers of the admin device API: one runner's devices, and every runner's (by kind).
import { deviceKindSchema, deviceStateSchema } from "../../protocol/devices.js";
import { listDevicesResponseSchema, runnerIdSchema, type DeviceView } from "../../protocol/http.js";
import type { RouteContext } from "../context.js";
import type { DeviceRecord } from "../store/contract.js";
import { HttpError, reply, type Reply, type RouteRequest } from "./router.js";
import { CURSOR_KEYS, LIST_PAGE, parsePage, takePage } from "./pagination.js";

export async function listRunnerDevices(request: RouteRequest, context: RouteContext): Promise<Reply> {
  const id = runnerIdSchema.safeParse(request.params.id);
  if (!id.success) throw new HttpError(400, "bad_request", "id: a runner id (rnr_...)");
  if (!(await context.store.findRunner(id.data)))
    throw new HttpError(404, "runner_not_found", `runner ${id.data} does not exist`);
  return replyWithPage(request, context, { runnerId: id.data });
}

/** `?kind=gpu` keeps one kind, `?state=online` one state. */
export async function listDevices(request: RouteRequest, context: RouteContext): Promise<Reply> {
  const kind = optionalQuery(request, "kind", deviceKindSchema.safeParse.bind(deviceKindSchema));
  const state = optionalQuery(request, "state", deviceStateSchema.safeParse.bind(deviceStateSchema));
  return replyWithPage(request, context, { kind, state });
}

async function replyWithPage(
  request: RouteRequest,
  context: RouteContext,
  filter: Parameters<RouteContext["store"]["devices"]["list"]>[0],
): Promise<Reply> {
  const page = parsePage(request.query, LIST_PAGE, CURSOR_KEYS.device);
  const after = page.after && { runnerId: page.after[0], deviceId: page.after[1] };
  const rows = await context.store.devices.list(filter, { after, limit: page.limit + 1 });
  const { items, nextCursor } = takePage(rows, page.limit, (device) => [device.runnerId, device.id]);
  return reply(listDevicesResponseSchema, 200, {
    devices: items.map((device) => toDeviceView(device, context)),
    nextCursor,
  });
}

function optionalQuery<T>(
  request: RouteRequest,
  name: string,
  parse: (raw: string) => { success: true; data: T } | { success: false },
): T | undefined {
  const raw = request.query.get(name);
  if (raw === null) return undefined;
  const parsed = parse(raw);
  if (!parsed.success) throw new HttpError(400, "bad_request", `${name}: not a valid device ${name}`);
  return parsed.data;
}

function toDeviceView(device: DeviceRecord, context: RouteContext): DeviceView {
  return {
    runnerId: device.runnerId,
    id: device.id,
    kind: device.kind,
    name: device.name,
    state: device.state,
    attributes: device.attributes,
    stale: device.stale,
    present: device.present,
    fingerprint: device.fingerprint,
    lastSeenAt: device.lastSeenAt.toISOString(),
    updatedAt: device.updatedAt.toISOString(),
    runnerConnected: context.queue.isConnected(device.runnerId),
  };
}
