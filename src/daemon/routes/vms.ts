// /v1/vms: register, list, remove and inspect VMs.
import { Type } from 'typebox';
import { queryDisks } from '../../app/vocabulary.js';
import { validateVmName } from '../../app/vm-registry.js';
import { ConflictError, InvalidInputError } from '../../util/errors.js';
import { ErrorSchema, VmEntrySchema, VmStatusSchema } from '../api-types.js';
import type { Api, DaemonContext } from '../context.js';

export const VmParams = Type.Object({ vm: Type.String({ minLength: 1 }) });

export function vmRoutes(app: Api, { manager }: DaemonContext): void {
  const errors = { 400: ErrorSchema, 404: ErrorSchema, 409: ErrorSchema, 500: ErrorSchema };

  app.get('/v1/vms', { schema: { response: { 200: Type.Object({ vms: Type.Array(VmEntrySchema) }), ...errors } } }, async () => ({
    vms: await manager.registry.list(),
  }));

  app.post('/v1/vms', { schema: { body: VmEntrySchema, response: { 201: Type.Object({ vm: VmEntrySchema }), ...errors } } }, async (req, reply) => {
    const { name, qmp, guestAgent, connect } = req.body;
    try {
      validateVmName(name);
    } catch (error) {
      throw new InvalidInputError(`name: ${(error as Error).message}`, { cause: error });
    }
    if (qmp !== undefined && !qmp.startsWith('/')) throw new InvalidInputError(`qmp: '${qmp}' is not an absolute path`, { hint: 'give the unix socket QEMU listens on for QMP' });
    const vm = { name, ...(qmp !== undefined ? { qmp } : {}), ...(guestAgent !== undefined ? { guestAgent } : {}), ...(connect !== undefined ? { connect } : {}) };
    await manager.registry.add(vm);
    return reply.code(201).send({ vm });
  });

  app.delete('/v1/vms/:vm', { schema: { params: VmParams, response: { 204: Type.Null(), ...errors } } }, async (req, reply) => {
    const { vm } = req.params;
    const active = manager.vmJob(vm);
    if (active) throw new ConflictError(`VM '${vm}' has an active job ${active.id}`, { hint: 'abort or finish it first' });
    await manager.registry.remove(vm);
    await manager.pool.drop(vm);
    return reply.code(204).send(null);
  });

  app.get('/v1/vms/:vm', { schema: { params: VmParams, response: { 200: VmStatusSchema, ...errors } } }, async (req) => {
    const entry = await manager.registry.get(req.params.vm);
    let status: unknown = null;
    let disks: { target: string; format: string; virtualSize: number; filename: string }[] = [];
    let connected = false;
    try {
      if (entry.qmp === undefined) throw new Error('a libvirt domain: inspected through libvirt');
      const conn = await manager.pool.get(entry);
      status = await conn.qmp.execute('query-status');
      disks = (await queryDisks(conn.qmp)).map((d) => ({ target: d.target, format: d.format, virtualSize: d.virtualSize, filename: d.filename }));
      connected = true;
    } catch (error) {
      req.log.debug({ err: error }, 'VM not reachable');
    }
    return { name: entry.name, ...(entry.qmp ? { qmp: entry.qmp } : {}), ...(entry.connect ? { connect: entry.connect } : {}), connected, status, disks, job: manager.vmJob(entry.name) };
  });
}
