"""Vehicle: path following with acceleration limits, and a 7-DOF full-car suspension.

The suspension is the classic linear full-car model: a sprung body (heave z, pitch, roll) on four
springs and dampers, four unsprung wheel masses on tyre springs driven by the road heights under
the wheels. It is linear and time-invariant, so it is discretised exactly (zero-order hold on the
road input, matrix exponential) at the physics rate (default 1 kHz): no integration error, stable
at any step. Static sag under gravity is a constant offset, so states are displacements about it.

Conventions (ROS REP 103): x forward, y left, z up; pitch is positive nose-down (rotation about
+y), roll positive left-side-up (rotation about +x). Body point (px, py) relative to the centre of
gravity sits at height z - px * pitch + py * roll (small angles).
"""

from dataclasses import dataclass

import numpy as np
from scipy.linalg import expm

# Wheel order used everywhere: front-left, front-right, rear-left, rear-right.
WHEELS = ('front_left', 'front_right', 'rear_left', 'rear_right')


@dataclass(frozen=True)
class VehicleParams:
    """A mid-size off-road vehicle (about an SUV / large UGV)."""

    sprung_mass_kg: float = 1100.0
    pitch_inertia_kgm2: float = 1700.0
    roll_inertia_kgm2: float = 450.0
    unsprung_mass_kg: float = 45.0            # per wheel
    cg_to_front_axle_m: float = 1.2
    cg_to_rear_axle_m: float = 1.4
    track_m: float = 1.6
    cg_height_m: float = 0.65                 # above the ground, at rest
    spring_front_npm: float = 24000.0         # per wheel
    spring_rear_npm: float = 22000.0
    damper_front_nspm: float = 2000.0
    damper_rear_nspm: float = 1900.0
    tyre_stiffness_npm: float = 200000.0
    tyre_contact_length_m: float = 0.2        # heights are averaged over it (tyre envelope)
    tyre_envelope_samples: int = 5
    max_accel_mps2: float = 1.5
    max_decel_mps2: float = 3.0
    max_speed_mps: float = 20.0
    physics_rate_hz: int = 1000

    def __post_init__(self):
        if self.physics_rate_hz < 1000:
            raise ValueError('physics_rate_hz must be >= 1000 Hz')
        positive = ('sprung_mass_kg', 'pitch_inertia_kgm2', 'roll_inertia_kgm2',
                    'unsprung_mass_kg',
                    'cg_to_front_axle_m', 'cg_to_rear_axle_m', 'track_m', 'spring_front_npm',
                    'spring_rear_npm', 'tyre_stiffness_npm', 'max_accel_mps2', 'max_decel_mps2')
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f'vehicle parameter {name} must be > 0')

    @property
    def wheelbase_m(self) -> float:
        return self.cg_to_front_axle_m + self.cg_to_rear_axle_m

    def wheel_positions_from_cg(self):
        """(4, 2) wheel (x, y) relative to the centre of gravity, m, in WHEELS order."""
        a, b, w = self.cg_to_front_axle_m, self.cg_to_rear_axle_m, 0.5 * self.track_m
        return np.array([[a, w], [a, -w], [-b, w], [-b, -w]])

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class FullCarSuspension:
    """Exactly discretised linear 7-DOF suspension.

    State x (14,): [z, pitch, roll, zu_fl, zu_fr, zu_rl, zu_rr] (m, rad) then their rates.
    Input u (4,): road heights under the wheels (m).
    """

    def __init__(self, params: VehicleParams):
        p = params
        self.params = p
        self.dt_s = 1.0 / p.physics_rate_hz
        pos = p.wheel_positions_from_cg()
        k = np.array([p.spring_front_npm] * 2 + [p.spring_rear_npm] * 2)
        c = np.array([p.damper_front_nspm] * 2 + [p.damper_rear_nspm] * 2)
        # Attachment height of wheel i on the body: G[i] @ [z, pitch, roll].
        g = np.column_stack([np.ones(4), -pos[:, 0], pos[:, 1]])
        n = 7
        stiffness = np.zeros((n, n))
        damping = np.zeros((n, n))
        # Suspension forces on body: -k (G q_b - zu); on wheels: the opposite.
        coupling = np.hstack([g, -np.eye(4)])          # spring extension per wheel
        stiffness += coupling.T @ np.diag(k) @ coupling
        damping += coupling.T @ np.diag(c) @ coupling
        stiffness[3:, 3:] += np.eye(4) * p.tyre_stiffness_npm
        mass = np.diag([p.sprung_mass_kg, p.pitch_inertia_kgm2, p.roll_inertia_kgm2]
                       + [p.unsprung_mass_kg] * 4)
        m_inv = np.linalg.inv(mass)
        road = np.zeros((n, 4))
        road[3:, :] = np.eye(4) * p.tyre_stiffness_npm
        self.A = np.block([[np.zeros((n, n)), np.eye(n)],
                           [-m_inv @ stiffness, -m_inv @ damping]])
        self.B = np.vstack([np.zeros((n, 4)), m_inv @ road])
        # Zero-order-hold discretisation via the augmented matrix exponential.
        aug = np.zeros((18, 18))
        aug[:14, :14] = self.A
        aug[:14, 14:] = self.B
        phi = expm(aug * self.dt_s)
        self.Ad = phi[:14, :14]
        self.Bd = phi[:14, 14:]

    def steady_state(self, road_heights_m):
        """State at rest on constant road heights (4,)."""
        return -np.linalg.solve(self.A, self.B @ np.asarray(road_heights_m, dtype=float))

    def simulate(self, x0, road_heights_m):
        """Advance from x0 over road inputs (n, 4), one physics step each (input held per step).

        Returns (states (n, 14) after each step, accelerations (n, 3) of z, pitch, roll at
        those instants, in m/s^2 and rad/s^2).
        """
        u = np.asarray(road_heights_m, dtype=float)
        states = np.empty((len(u), 14))
        x = np.asarray(x0, dtype=float)
        ad, bd = self.Ad, self.Bd
        forced = u @ bd.T            # input contribution, computed for all steps at once
        for i in range(len(u)):
            x = ad @ x + forced[i]
            states[i] = x
        accel = states @ self.A[7:10].T + u @ self.B[7:10].T
        return states, accel

    def natural_frequencies_hz(self):
        return np.sort(np.abs(np.linalg.eigvals(self.A).imag))[::2] / (2.0 * np.pi)


def speed_ramp(v0_mps, target_mps, n_steps, dt_s, max_accel_mps2, max_decel_mps2):
    """Speeds (n,) after each of n steps, approaching `target_mps` under acceleration limits."""
    t = dt_s * np.arange(1, n_steps + 1)
    return v0_mps + np.clip(target_mps - v0_mps, -max_decel_mps2 * t, max_accel_mps2 * t)
