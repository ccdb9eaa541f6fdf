import { describe, expect, it } from 'vitest';
import {
  DISK_EDGES,
  ROLE_EDGES,
  demotionRefusal,
  diskStateFromFlags,
  promotionRefusal,
  transitionDisk,
  transitionRole,
  visibleRole,
  type DiskState,
  type Role,
} from '../../src/resource/states.js';

const roles: Role[] = ['Primary', 'Secondary', 'Promoting', 'Demoting'];
const disks: DiskState[] = ['Diskless', 'Attaching', 'Inconsistent', 'Outdated', 'Consistent', 'UpToDate', 'Failed'];

describe('role transitions', () => {
  for (const from of roles) {
    for (const to of roles) {
      const legal = from === to || ROLE_EDGES[from].includes(to);
      it(`${from} -> ${to} is ${legal ? 'legal' : 'refused'}`, () => {
        if (legal) expect(transitionRole(from, to)).toBe(to);
        else expect(() => transitionRole(from, to)).toThrow(/illegal role transition/);
      });
    }
  }
});

describe('the role table', () => {
  it('a Secondary becomes Primary only through Promoting, and back only through Demoting', () => {
    expect(ROLE_EDGES.Secondary).toEqual(['Promoting']);
    expect(ROLE_EDGES.Primary).toEqual(['Demoting']);
    expect(ROLE_EDGES.Promoting).toEqual(['Primary', 'Secondary']);
    expect(ROLE_EDGES.Demoting).toEqual(['Secondary', 'Primary']);
  });
  it('peers see Promoting as Secondary and Demoting as Primary', () => {
    expect(roles.map((r) => visibleRole(r))).toEqual(['Primary', 'Secondary', 'Secondary', 'Primary']);
  });
});

describe('disk transitions', () => {
  for (const from of disks) {
    for (const to of disks) {
      const legal = from === to || DISK_EDGES[from].includes(to);
      it(`${from} -> ${to} is ${legal ? 'legal' : 'refused'}`, () => {
        if (legal) expect(transitionDisk(from, to)).toBe(to);
        else expect(() => transitionDisk(from, to)).toThrow(/illegal disk transition/);
      });
    }
  }

  it('a failed disk can only be detached', () => {
    expect(DISK_EDGES.Failed).toEqual(['Diskless']);
  });
});

describe('disk state from metadata flags', () => {
  it('fresh metadata is Inconsistent', () => {
    expect(diskStateFromFlags({ consistent: false, wasUpToDate: false })).toBe('Inconsistent');
    expect(diskStateFromFlags({ consistent: false, wasUpToDate: true })).toBe('Inconsistent');
  });
  it('consistent and up to date is UpToDate; consistent alone is Outdated', () => {
    expect(diskStateFromFlags({ consistent: true, wasUpToDate: true })).toBe('UpToDate');
    expect(diskStateFromFlags({ consistent: true, wasUpToDate: false })).toBe('Outdated');
  });
});

describe('promotion (G4)', () => {
  it('UpToDate promotes without force', () => {
    expect(promotionRefusal('r0', 'UpToDate', false)).toBeNull();
  });
  for (const disk of ['Inconsistent', 'Outdated', 'Consistent'] as const) {
    it(`${disk} needs --force`, () => {
      expect(promotionRefusal('r0', disk, false)?.code).toBe('ERR_NOT_UP_TO_DATE');
      expect(promotionRefusal('r0', disk, false)?.message).toMatch(/--force/);
      expect(promotionRefusal('r0', disk, true)).toBeNull();
    });
  }
  for (const disk of ['Diskless', 'Attaching', 'Failed'] as const) {
    it(`${disk} is refused even with --force`, () => {
      expect(promotionRefusal('r0', disk, true)?.code).toBe('ERR_NOT_UP_TO_DATE');
    });
  }
});

describe('demotion', () => {
  it('is refused with clients connected unless forced', () => {
    expect(demotionRefusal('r0', 0, false)).toBeNull();
    expect(demotionRefusal('r0', 2, false)?.code).toBe('ERR_CLIENTS_CONNECTED');
    expect(demotionRefusal('r0', 2, true)).toBeNull();
  });
});
