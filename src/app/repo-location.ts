// Where a repository is, as the CLI and the daemon take it: an s3:// URL as it is, or a directory.
import { resolve } from 'node:path';
// The S3 location parser alone, not the repository index: the CLI's option parsing stays light (start-up).
import { isS3Location } from '../repository/store/s3-location.js';

/** `--repo` text as the app takes it: `s3://bucket[/prefix]` unchanged, a directory made absolute. */
export function repoLocation(text: string): string {
  return isS3Location(text) ? text : resolve(text);
}

/** Whether a request may name this repository: an absolute directory or an s3:// URL (relative paths mean nothing to a daemon). */
export function isAcceptedRepoLocation(text: string): boolean {
  return text.startsWith('/') || isS3Location(text);
}
