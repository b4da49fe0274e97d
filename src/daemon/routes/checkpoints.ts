// /v1/vms/:vm/checkpoints: the checkpoint chain (virsh checkpoint-* verbs) over the VM's shared QMP connection.
import { Type } from 'typebox';
import { formatCheckpointTree } from '../../app/vocabulary.js';
import { parseCheckpointXml } from '../../app/vocabulary.js';
import type { CheckpointDefinition } from '../../app/vocabulary.js';
import { FleeceError, InvalidInputError } from '../../util/errors.js';
import { CheckpointCreateSchema, CheckpointListSchema, CheckpointRedefineSchema, ErrorSchema, NameXmlSchema } from '../api-types.js';
import type { Api, DaemonContext } from '../context.js';
import { VmParams } from './vms.js';

const CheckpointParams = Type.Object({ vm: Type.String({ minLength: 1 }), name: Type.String({ minLength: 1 }) });

function xmlField(field: string, xml: string): CheckpointDefinition {
  try {
    return parseCheckpointXml(xml);
  } catch (error) {
    if (error instanceof FleeceError && error.code === 'INVALID_INPUT') throw new InvalidInputError(`${field}: ${error.message}`, { cause: error });
    throw error;
  }
}

export function checkpointRoutes(app: Api, { manager }: DaemonContext): void {
  const errors = { 400: ErrorSchema, 404: ErrorSchema, 409: ErrorSchema, 500: ErrorSchema };

  app.get('/v1/vms/:vm/checkpoints', { schema: { params: VmParams, response: { 200: CheckpointListSchema, ...errors } } }, async (req) => {
    const { checkpoints } = await manager.connection(req.params.vm);
    const chain = await checkpoints.chain();
    return {
      current: chain.current ?? null,
      checkpoints: chain.list().map((cp) => ({ name: cp.name, parent: cp.parent ?? null, creationTime: cp.creationTime, disks: cp.disks })),
    };
  });

  app.get('/v1/vms/:vm/checkpoints/tree', { schema: { params: VmParams, response: { 200: Type.Object({ text: Type.String() }), ...errors } } }, async (req) => {
    const { checkpoints } = await manager.connection(req.params.vm);
    return { text: formatCheckpointTree((await checkpoints.chain()).tree()) };
  });

  app.get(
    '/v1/vms/:vm/checkpoints/validate',
    { schema: { params: VmParams, response: { 200: Type.Object({ checks: Type.Array(Type.Unknown()) }), ...errors } } },
    async (req) => {
      const { checkpoints } = await manager.connection(req.params.vm);
      return { checks: await checkpoints.validate() };
    },
  );

  app.post(
    '/v1/vms/:vm/checkpoints',
    { schema: { params: VmParams, body: CheckpointCreateSchema, response: { 201: NameXmlSchema, ...errors } } },
    async (req, reply) => {
      const { xml, name, description } = req.body;
      let def: CheckpointDefinition;
      if (xml !== undefined) {
        if (name !== undefined || description !== undefined) throw new InvalidInputError('name: give either xml or name/description, not both');
        def = xmlField('xml', xml);
      } else {
        if (name === undefined) throw new InvalidInputError('name: give the checkpoint name (or its xml)');
        def = { name, disks: [], ...(description !== undefined ? { description } : {}) };
      }
      const { checkpoints } = await manager.connection(req.params.vm);
      const cp = await checkpoints.create(def);
      return reply.code(201).send({ name: cp.name, xml: await checkpoints.dumpXml(cp.name) });
    },
  );

  app.post(
    '/v1/vms/:vm/checkpoints/redefine',
    { schema: { params: VmParams, body: CheckpointRedefineSchema, response: { 201: Type.Object({ name: Type.String() }), ...errors } } },
    async (req, reply) => {
      xmlField('xml', req.body.xml);
      const { checkpoints } = await manager.connection(req.params.vm);
      const cp = await checkpoints.redefine(req.body.xml);
      return reply.code(201).send({ name: cp.name });
    },
  );

  app.get(
    '/v1/vms/:vm/checkpoints/:name',
    { schema: { params: CheckpointParams, querystring: Type.Object({ size: Type.Optional(Type.Boolean()) }, { additionalProperties: false }), response: { 200: NameXmlSchema, ...errors } } },
    async (req) => {
      const { checkpoints } = await manager.connection(req.params.vm);
      return { name: req.params.name, xml: await checkpoints.dumpXml(req.params.name, { size: req.query.size ?? false }) };
    },
  );

  app.delete(
    '/v1/vms/:vm/checkpoints/:name',
    { schema: { params: CheckpointParams, querystring: Type.Object({ metadataOnly: Type.Optional(Type.Boolean()) }, { additionalProperties: false }), response: { 204: Type.Null(), ...errors } } },
    async (req, reply) => {
      const { checkpoints } = await manager.connection(req.params.vm);
      await checkpoints.delete(req.params.name, { metadataOnly: req.query.metadataOnly ?? false });
      return reply.code(204).send(null);
    },
  );
}
