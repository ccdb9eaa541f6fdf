/**
 * Prints a Config in the config syntax with every default written out (what
 * `mirrorbd dump` shows). The output parses back to an equal Config: each
 * value is printed by the same value type that parses it, and anything that
 * is not a plain word is quoted.
 */
import type { Config, NodeConfig, ResourceConfig } from './model.js';
import { findResource } from './lookup.js';
import { OPTION_SECTIONS, SECTIONS, type SectionRule } from './schema.js';

const INDENT = '    ';

/** A word the lexer reads back unchanged; anything else is quoted. */
const PLAIN_WORD = /^[^\s{};#"\x00-\x1f\x7f]+$/;

export function quote(value: string): string {
  if (PLAIN_WORD.test(value)) return value;
  const escaped = value.replace(/[\\"\n\t]/g, (c) => (c === '\n' ? '\\n' : c === '\t' ? '\\t' : `\\${c}`));
  return `"${escaped}"`;
}

/** The statements of one section, in table order; keys without a value are left out. */
function statements(rule: SectionRule, values: Readonly<Record<string, unknown>>, depth: number): string[] {
  const pad = INDENT.repeat(depth);
  const lines: string[] = [];
  for (const key of rule.keys) {
    const value = values[key.field];
    if (value === undefined) continue;
    const items = key.list ? (value as unknown[]) : [value];
    const words = items.map((item) => key.type.format(item)).filter((w): w is string => w !== null);
    if (words.length === 0) continue;
    lines.push(`${pad}${key.key} ${words.map(quote).join(' ')};`);
  }
  return lines;
}

function section(header: string, body: string[], depth: number): string[] {
  const pad = INDENT.repeat(depth);
  return [`${pad}${header} {`, ...body, `${pad}}`];
}

function formatNode(node: NodeConfig): string[] {
  return section(`on ${quote(node.name)}`, statements(SECTIONS.on, node as unknown as Record<string, unknown>, 2), 1);
}

function formatResource(resource: ResourceConfig): string[] {
  const body: string[] = [];
  for (const name of OPTION_SECTIONS) {
    const values = resource[name] as unknown as Record<string, unknown>;
    const lines = statements(SECTIONS[name], values, 2);
    if (lines.length > 0) body.push(...section(name, lines, 1));
  }
  for (const node of resource.nodes) body.push(...formatNode(node));
  return section(`resource ${quote(resource.name)}`, body, 0);
}

/**
 * The whole config, or `global` and the one named resource. `common` is never
 * printed: its settings are already merged into each resource.
 */
export function formatConfig(config: Config, resourceName?: string): string {
  const resources = resourceName === undefined ? config.resources : [findResource(config, resourceName)];
  const blocks = [
    section('global', statements(SECTIONS.global, config.global as unknown as Record<string, unknown>, 1), 0),
    ...resources.map(formatResource),
  ];
  return `${blocks.map((b) => b.join('\n')).join('\n\n')}\n`;
}
