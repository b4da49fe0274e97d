// Deleting one libvirt checkpoint whatever the domain's state. libvirt (9.0) refuses it for a shut-off domain
// ("cannot delete checkpoint for inactive domain"): a backup whose domain was destroyed mid-read would leave its new
// checkpoint, and its bitmap in the images, until the domain ran again. Then fleece removes the checkpoint's bitmaps
// from the qcow2 images itself (`qemu-img bitmap --remove`: no QEMU holds a shut-off domain's images) and libvirt's
// metadata only (VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY).
import {
  LibvirtError,
  VIR_ERR_NO_DOMAIN_CHECKPOINT,
  type LibvirtConnection,
} from '../../../native/libvirt/index.js';
import { parseCheckpointXml } from '../../checkpoint/checkpoint-xml.js';
import { checkpointBitmaps } from '../../checkpoint/model.js';
import { FleeceError } from '../../util/errors.js';
import { domainDisks } from './libvirt-domain-disks.js';

/** How the checkpoint went: through libvirt, by fleece on the images of a shut-off domain, or it was already gone. */
export type CheckpointDeleted = 'libvirt' | 'images' | 'absent';

/**
 * Deletes checkpoint `name` of `domain`: virDomainCheckpointDelete while the domain runs; on a shut-off domain its
 * bitmaps from every qcow2 image (a bitmap already absent is fine: QEMU killed before it saved it), then the metadata.
 * @throws LibvirtError; FleeceError naming the image when qemu-img cannot remove a bitmap (the metadata then stays).
 */
export async function deleteLibvirtCheckpoint(conn: LibvirtConnection, domain: string, name: string): Promise<CheckpointDeleted> {
  const { state } = await conn.domainState(domain);
  try {
    if (state !== 'shutoff' && state !== 'crashed') {
      await conn.checkpointDelete(domain, name);
      return 'libvirt';
    }
    const cp = parseCheckpointXml(await conn.checkpointXml(domain, name, { noDomain: true }));
    const { disks } = domainDisks(await conn.domainXml(domain, { inactive: true }));
    for (const { disk, bitmap } of checkpointBitmaps(cp)) {
      const image = disks.find((d) => d.target === disk);
      if (image?.format === 'qcow2' && image.path) await removeImageBitmap(image.path, bitmap);
    }
    await conn.checkpointDelete(domain, name, { metadataOnly: true });
    return 'images';
  } catch (error) {
    if (error instanceof LibvirtError && error.libvirtCode === VIR_ERR_NO_DOMAIN_CHECKPOINT) return 'absent';
    throw error;
  }
}

/** `qemu-img bitmap --remove`; a bitmap the image does not hold is not an error. */
async function removeImageBitmap(path: string, bitmap: string): Promise<void> {
  const { execa } = await import('execa'); // loaded on this rare path only
  const result = await execa('qemu-img', ['bitmap', '--remove', '-f', 'qcow2', path, bitmap], { reject: false, stdin: 'ignore' });
  if (result.exitCode === 0) return;
  const message = String(result.stderr ?? '').trim() || String(result.shortMessage ?? '');
  if (/not found|Could not find|does not exist/i.test(message) && !/No such file/.test(message)) return;
  throw new FleeceError('INTERNAL', `could not remove bitmap ${bitmap} from ${path}: ${message}`, {
    hint: `check that no process holds the image, then remove it with \`qemu-img bitmap --remove ${path} ${bitmap}\``,
  });
}
