/**
 * The config file: DRBD's syntax, read into the typed model of model.ts.
 * Syntax errors and bad values are MirrorError ERR_BAD_CONFIG with
 * `FILE:LINE:COL: found ..., expected ...`.
 */
import { MirrorError, describeError } from '../errors.js';
import { expandIncludes, readConfigText } from './include.js';
import { tokenize } from './lexer.js';
import type { Config } from './model.js';
import { parseTree } from './parser.js';
import { resolveConfig } from './resolve.js';

export type * from './model.js';
export { DEFAULT_CONFIG_FILE, DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_NBD_PORT, DEFAULT_RUN_DIR, MAX_MAX_PAYLOAD_BYTES } from './model.js';
export { formatConfig } from './format.js';
export { findResource, localNode } from './lookup.js';
export { HANDLER_NAMES, type HandlerName } from './schema.js';

/** Parses config text; `file` names it in messages. `include` needs loadConfig. */
export function parseConfig(text: string, file: string): Config {
  return resolveConfig(parseTree(tokenize(text, file)), file);
}

/** Reads and parses a config file, following its includes. */
export async function loadConfig(file: string): Promise<Config> {
  let text: string;
  try {
    text = await readConfigText(file);
  } catch (e) {
    throw new MirrorError('ERR_BAD_CONFIG', `cannot read config file ${file}: ${describeError(e)}`, {
      file,
      reason: (e as NodeJS.ErrnoException).code ?? describeError(e),
    });
  }
  const items = await expandIncludes(parseTree(tokenize(text, file)));
  return resolveConfig(items, file);
}
