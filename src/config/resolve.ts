/**
 * From syntax tree to Config: checks every section and key against the
 * schema table, fills defaults, and merges `common` into each resource (a key
 * set in the resource wins over the same key in `common`, key by key). Also
 * the rules that span statements: unique names, node-ids and addresses. Pure.
 */
import { configError } from '../errors.js';
import type {
  Config,
  DiskOptions,
  GlobalOptions,
  NbdOptions,
  NetOptions,
  NodeConfig,
  ResourceConfig,
  ResourceOptions,
  TcpAddress,
} from './model.js';
import { describeToken, type Token } from './lexer.js';
import type { Item, Section } from './parser.js';
import {
  OPTION_SECTIONS,
  SECTIONS,
  TOP_LEVEL,
  sectionDefaults,
  type OptionSectionName,
  type SectionName,
  type SectionRule,
} from './schema.js';
import * as v from './values.js';

/** A value set by a statement, with where it was set. */
interface SetValue {
  value: unknown;
  keyword: Token;
  /** The first value token: errors about the value point here. */
  at: Token;
}

interface SectionBody {
  values: Map<string, SetValue>;
  sections: Section[];
}

type OptionLayer = Partial<Record<OptionSectionName, Map<string, SetValue>>>;

function fail(t: Token, message: string): never {
  throw configError(t.file, t.line, t.column, message);
}

function at(t: Token): string {
  return `${t.line}:${t.column}`;
}

function expectedHere(rule: SectionRule): string {
  const keys = rule.keys.map((k) => k.key);
  const parts: string[] = [];
  if (keys.length > 0) parts.push(`the keys ${keys.join(', ')}`);
  if (rule.sections.length > 0) parts.push(`the sections ${rule.sections.join(', ')}`);
  return parts.length > 0 ? `one of ${parts.join(', or ')}` : 'nothing here';
}

/** Checks a section's items against its rule and parses every value. */
function readBody(items: readonly Item[], rule: SectionRule, where: string): SectionBody {
  const values = new Map<string, SetValue>();
  const sections: Section[] = [];
  for (const item of items) {
    const kw = item.keyword;
    if (item.kind === 'statement') {
      const key = rule.keys.find((k) => k.key === kw.text);
      if (key === undefined) {
        if ((rule.sections as readonly string[]).includes(kw.text)) {
          fail(kw, `found '${kw.text}' as a statement, expected a section '${kw.text} { ... }'`);
        }
        fail(kw, `found unknown key '${kw.text}' ${where}, expected ${expectedHere(rule)}`);
      }
      const [first, second] = item.values;
      if (first === undefined) fail(item.end, `found ';', expected a value for '${key.key}' (${key.type.expected})`);
      if (second !== undefined && !key.list) {
        fail(second, `found ${describeToken(second)}, expected ';' after '${key.key} ${first.text}'`);
      }
      const previous = values.get(key.field);
      if (previous !== undefined && !key.list) {
        fail(kw, `found '${key.key}' a second time ${where}, expected it once (first set at ${at(previous.keyword)})`);
      }
      if (key.list) {
        const list = (previous?.value as unknown[] | undefined) ?? [];
        for (const tok of item.values) list.push(key.type.parse(tok));
        values.set(key.field, { value: list, keyword: previous?.keyword ?? kw, at: previous?.at ?? first });
      } else {
        values.set(key.field, { value: key.type.parse(first), keyword: kw, at: first });
      }
      continue;
    }
    const name = kw.text as SectionName;
    if (!rule.sections.includes(name)) {
      if (rule.keys.some((k) => k.key === kw.text)) {
        fail(kw, `found '${kw.text}' as a section, expected a statement '${kw.text} VALUE;'`);
      }
      fail(kw, `found unknown section '${kw.text}' ${where}, expected ${expectedHere(rule)}`);
    }
    const child = SECTIONS[name];
    const [arg0, arg1] = item.args;
    if (child.takesName) {
      if (arg0 === undefined) fail(kw, `found '${kw.text} {' without a name, expected '${kw.text} NAME {'`);
      if (arg1 !== undefined) fail(arg1, `found ${describeToken(arg1)}, expected '{' after '${kw.text} ${arg0.text}'`);
    } else if (arg0 !== undefined) {
      fail(arg0, `found ${describeToken(arg0)}, expected '{' after '${kw.text}'`);
    }
    sections.push(item);
  }
  return { values, sections };
}

/** Sections of one name may repeat; their statements count as one section. */
function itemsOf(sections: readonly Section[], name: SectionName): Item[] {
  return sections.filter((s) => s.keyword.text === name).flatMap((s) => s.items);
}

function readOptionLayer(sections: readonly Section[], where: string): OptionLayer {
  const layer: OptionLayer = {};
  for (const name of OPTION_SECTIONS) {
    layer[name] = readBody(itemsOf(sections, name), SECTIONS[name], `in '${name}' ${where}`).values;
  }
  return layer;
}

/** Defaults, then each layer in order; a later layer replaces a key wholesale. */
function mergeSection(name: OptionSectionName, layers: readonly OptionLayer[]): Record<string, unknown> {
  const rule = SECTIONS[name];
  const values = sectionDefaults(rule);
  const where = new Map<string, Token>();
  for (const layer of layers) {
    for (const [field, set] of layer[name] ?? []) {
      // Lists from `common` are copied so resources never share one array.
      values[field] = Array.isArray(set.value) ? [...set.value] : set.value;
      where.set(field, set.at);
    }
  }
  rule.check?.(values, (field) => where.get(field));
  return values;
}

function resolveGlobal(sections: readonly Section[]): GlobalOptions {
  const body = readBody(itemsOf(sections, 'global'), SECTIONS.global, "in 'global'");
  const values = sectionDefaults(SECTIONS.global);
  for (const [field, set] of body.values) values[field] = set.value;
  return values as unknown as GlobalOptions;
}

function addressKey(a: TcpAddress): string {
  return `${a.host.toLowerCase()}|${a.port}`;
}

interface NodeDraft {
  node: NodeConfig;
  keyword: Token;
  nameTok: Token;
  nodeIdAt: Token;
  addressAt: Token | undefined;
}

function resolveNode(section: Section, resourceName: string, defaultMetaDisk: string): NodeDraft {
  const nameTok = section.args[0]!;
  const name = v.name.parse(nameTok);
  const where = `in 'on ${name}' of resource ${resourceName}`;
  const body = readBody(section.items, SECTIONS.on, where);
  const required = (field: string, key: string, shape: string): SetValue =>
    body.values.get(field) ?? fail(section.keyword, `found 'on ${name}' without '${key}', expected '${key} ${shape};' in it`);
  const nodeId = required('nodeId', 'node-id', 'N');
  const disk = required('disk', 'disk', 'PATH|none');
  const address = body.values.get('address');
  const node: NodeConfig = {
    name,
    nodeId: nodeId.value as number,
    disk: disk.value as string | null,
    metaDisk: (body.values.get('metaDisk')?.value as string | undefined) ?? defaultMetaDisk,
    address: (address?.value as TcpAddress | undefined) ?? null,
    nbdAddress: (body.values.get('nbdAddress')?.value as NodeConfig['nbdAddress'] | undefined) ?? null,
  };
  return { node, keyword: section.keyword, nameTok, nodeIdAt: nodeId.at, addressAt: address?.at };
}

function resolveResource(section: Section, common: OptionLayer): ResourceConfig {
  const nameTok = section.args[0]!;
  const name = v.name.parse(nameTok);
  const where = `in resource ${name}`;
  const body = readBody(section.items, SECTIONS.resource, where);
  const layers = [common, readOptionLayer(body.sections, where)];
  const defaultMetaDisk = (body.values.get('metaDisk')?.value as string | undefined) ?? 'internal';

  const drafts: NodeDraft[] = [];
  for (const on of body.sections.filter((s) => s.keyword.text === 'on')) {
    const draft = resolveNode(on, name, defaultMetaDisk);
    const sameName = drafts.find((d) => d.node.name === draft.node.name);
    if (sameName !== undefined) {
      fail(draft.nameTok, `found node '${draft.node.name}' a second time in resource ${name}, expected each 'on' name once (first at ${at(sameName.nameTok)})`);
    }
    const sameId = drafts.find((d) => d.node.nodeId === draft.node.nodeId);
    if (sameId !== undefined) {
      fail(draft.nodeIdAt, `found node-id ${draft.node.nodeId} again (node '${sameId.node.name}' has it), expected a node-id unique in resource ${name}`);
    }
    const addr = draft.node.address;
    const sameAddress = addr === null ? undefined : drafts.find((d) => d.node.address !== null && addressKey(d.node.address) === addressKey(addr));
    if (sameAddress !== undefined) {
      fail(draft.addressAt!, `found address ${v.formatTcp(addr!)} again (node '${sameAddress.node.name}' has it), expected a different address for each node`);
    }
    drafts.push(draft);
  }
  if (drafts.length === 0) {
    fail(nameTok, `found resource ${name} without 'on' sections, expected at least one 'on NODE { ... }'`);
  }
  if (drafts.length > 1) {
    const unreachable = drafts.find((d) => d.node.address === null);
    if (unreachable !== undefined) {
      fail(unreachable.keyword, `found 'on ${unreachable.node.name}' without 'address', expected 'address HOST:PORT;' on every node of a resource with several nodes`);
    }
  }

  const resource: ResourceConfig = {
    name,
    net: mergeSection('net', layers) as unknown as NetOptions,
    disk: mergeSection('disk', layers) as unknown as DiskOptions,
    nbd: mergeSection('nbd', layers) as unknown as NbdOptions,
    options: mergeSection('options', layers) as unknown as ResourceOptions,
    handlers: mergeSection('handlers', layers) as Record<string, string>,
    nodes: drafts.map((d) => d.node),
  };
  checkRoleManager(resource, layers);
  return resource;
}

/** Where the winning layer set a field (undefined: it has its default). */
function setAt(layers: readonly OptionLayer[], section: OptionSectionName, field: string): SetValue | undefined {
  for (let i = layers.length - 1; i >= 0; i--) {
    const set = layers[i]![section]?.get(field);
    if (set !== undefined) return set;
  }
  return undefined;
}

/** Rules of the role manager's settings that need the nodes or another section. */
function checkRoleManager(resource: ResourceConfig, layers: readonly OptionLayer[]): void {
  const policy = resource.net.afterSb0pri;
  if (policy.policy === 'discard-node' && !resource.nodes.some((n) => n.name === policy.node)) {
    const names = resource.nodes.map((n) => n.name).join(', ');
    fail(setAt(layers, 'net', 'afterSb0pri')!.at, `found 'discard-node-${policy.node}', expected discard-node- followed by a node of resource ${resource.name} (${names})`);
  }
  // Fencing means "ask the fence-peer handler before writing alone"; without
  // one every loss of a peer would freeze or fail, which is never what was meant.
  if (resource.net.fencing !== 'dont-care' && resource.handlers['fence-peer'] === undefined) {
    fail(setAt(layers, 'net', 'fencing')!.at, `found 'fencing ${resource.net.fencing}' without a 'fence-peer' handler, expected 'handlers { fence-peer "COMMAND"; }' with it`);
  }
}

export function resolveConfig(items: readonly Item[], file: string): Config {
  const top = readBody(items, TOP_LEVEL, 'at the top level');
  const include = top.values.get('include');
  if (include !== undefined) {
    fail(include.keyword, `found 'include' in text parsed without a file system, expected it only in files read with loadConfig`);
  }
  const global = resolveGlobal(top.sections);
  const commonBody = readBody(itemsOf(top.sections, 'common'), SECTIONS.common, "in 'common'");
  const common = readOptionLayer(commonBody.sections, "in 'common'");

  const resources: ResourceConfig[] = [];
  const seen = new Map<string, Token>();
  for (const section of top.sections.filter((s) => s.keyword.text === 'resource')) {
    const resource = resolveResource(section, common);
    const first = seen.get(resource.name);
    if (first !== undefined) {
      fail(section.args[0]!, `found resource ${resource.name} a second time, expected each resource name once (first at ${first.file}:${at(first)})`);
    }
    seen.set(resource.name, section.args[0]!);
    resources.push(resource);
  }
  return { file, global, resources };
}
