// Backup jobs: backup-begin (push/pull), repository backups, domjobinfo/domjobabort, backup-dumpxml, the job list.
import { Type } from 'typebox';
import {
  BackupBeginSchema,
  ErrorSchema,
  JobListSchema,
  JobReplySchema,
  MaybeJobReplySchema,
  RepositoryBackupSchema,
} from '../api-types.js';
import type { Api, DaemonContext } from '../context.js';
import { VmParams } from './vms.js';

const JobParams = Type.Object({ id: Type.String({ minLength: 1 }) });

export function jobRoutes(app: Api, { manager }: DaemonContext): void {
  const errors = { 400: ErrorSchema, 404: ErrorSchema, 409: ErrorSchema, 500: ErrorSchema };

  app.post(
    '/v1/vms/:vm/backup-begin',
    { schema: { params: VmParams, body: BackupBeginSchema, response: { 202: JobReplySchema, ...errors } },
      preValidation: async (req) => {
        req.body ??= {};
      },
    },
    async (req, reply) => {
      const job = await manager.beginBackup(req.params.vm, req.body ?? {});
      return reply.code(202).send({ job });
    },
  );

  app.post(
    '/v1/vms/:vm/backups',
    { schema: { params: VmParams, body: RepositoryBackupSchema, response: { 202: JobReplySchema, ...errors } } },
    async (req, reply) => {
      const job = await manager.repositoryBackup(req.params.vm, req.body);
      return reply.code(202).send({ job });
    },
  );

  app.get(
    '/v1/vms/:vm/job',
    { schema: { params: VmParams, querystring: Type.Object({ completed: Type.Optional(Type.Boolean()) }, { additionalProperties: false }), response: { 200: MaybeJobReplySchema, ...errors } } },
    async (req) => {
      await manager.registry.get(req.params.vm);
      return { job: manager.vmJob(req.params.vm, req.query.completed ?? false) };
    },
  );

  app.post('/v1/vms/:vm/job/abort', { schema: { params: VmParams, response: { 200: JobReplySchema, ...errors } } }, async (req) => {
    await manager.registry.get(req.params.vm);
    return { job: await manager.abortVm(req.params.vm) };
  });

  app.get('/v1/vms/:vm/backup-xml', { schema: { params: VmParams, response: { 200: Type.Object({ xml: Type.String() }), ...errors } } }, async (req) => {
    await manager.registry.get(req.params.vm);
    return { xml: manager.backupXml(req.params.vm) };
  });

  app.get(
    '/v1/jobs',
    {
      schema: {
        querystring: Type.Object({ vm: Type.Optional(Type.String()), active: Type.Optional(Type.Boolean()) }, { additionalProperties: false }),
        response: { 200: JobListSchema, ...errors },
      },
    },
    async (req) => ({
      jobs: manager.list({
        ...(req.query.vm !== undefined && req.query.vm !== '' ? { vm: req.query.vm } : {}),
        ...(req.query.active !== undefined ? { active: req.query.active } : {}),
      }),
    }),
  );

  app.get('/v1/jobs/:id', { schema: { params: JobParams, response: { 200: JobReplySchema, ...errors } } }, async (req) => ({
    job: manager.get(req.params.id),
  }));

  app.post('/v1/jobs/:id/abort', { schema: { params: JobParams, response: { 200: JobReplySchema, ...errors } } }, async (req) => ({
    job: await manager.abort(req.params.id),
  }));

  app.post('/v1/jobs/:id/finish', { schema: { params: JobParams, response: { 200: JobReplySchema, ...errors } } }, async (req) => ({
    job: await manager.finish(req.params.id),
  }));
}
