// /v1/repository: list the backups of a repository, restore one, verify one.
import { Type } from 'typebox';
import { listRepositoryBackups, restoreFromRepository, verifyRepositoryBackup } from '../../app/jobs/repository-ops.js';
import { BackupListQuerySchema, BackupListSchema, ErrorSchema, RestoreSchema, VerifySchema } from '../api-types.js';
import type { Api, DaemonContext } from '../context.js';

export function repositoryRoutes(app: Api, _ctx: DaemonContext): void {
  const errors = { 400: ErrorSchema, 404: ErrorSchema, 409: ErrorSchema, 500: ErrorSchema };

  app.get(
    '/v1/repository/backups',
    {
      schema: {
        querystring: BackupListQuerySchema,
        response: { 200: BackupListSchema, ...errors },
      },
    },
    async (req) => {
      const { repo, vm, disk } = req.query;
      return listRepositoryBackups(repo, { ...(vm ? { vm } : {}), ...(disk ? { disk } : {}) });
    },
  );

  app.post('/v1/repository/restore', { schema: { body: RestoreSchema, response: { 200: Type.Object({ summary: Type.Unknown() }), ...errors } } }, async (req) => ({
    summary: await restoreFromRepository(req.body),
  }));

  app.post('/v1/repository/verify', { schema: { body: VerifySchema, response: { 200: Type.Object({ report: Type.Unknown() }), ...errors } } }, async (req) => ({
    report: await verifyRepositoryBackup(req.body),
  }));
}
