//! Scenes of the shapes world: one flat shape of one colour on a plain background, with the
//! caption that says what is drawn.

use image::{Rgb, RgbImage};

use crate::rng::{SeededRng, Stream};

/// Side of every world image, in pixels (the demo model's native size).
pub const IMAGE_SIZE: u32 = 64;

/// Supersampling per axis when rasterising (anti-aliased edges, exact and deterministic).
const SUPERSAMPLE: u32 = 4;

/// A shape the world can draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    /// A filled disc.
    Circle,
    /// A filled axis-aligned square.
    Square,
    /// A filled triangle, apex up.
    Triangle,
    /// A thick annulus: a disc with a round hole. Never drawn by the base world; it is the
    /// concept the demo's LoRA teaches.
    Ring,
}

impl Shape {
    /// The shapes of the base world (what the demo model is trained on).
    pub const BASE: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    /// The word used in captions.
    pub fn word(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Ring => "ring",
        }
    }

    /// Whether the offset `(dx, dy)` from the centre lies inside the shape of half-extent `r`.
    fn contains(self, dx: f32, dy: f32, r: f32) -> bool {
        match self {
            Shape::Circle => dx * dx + dy * dy <= r * r,
            // A square of the same area-scale as the circle would look smaller; 0.85 r keeps
            // the two visually alike in size.
            Shape::Square => dx.abs() <= 0.85 * r && dy.abs() <= 0.85 * r,
            // Apex at (0, −r), base from (−r, 0.8 r) to (r, 0.8 r).
            Shape::Triangle => dy <= 0.8 * r && dy >= -r && dx.abs() <= (dy + r) / 1.8,
            Shape::Ring => {
                let d2 = dx * dx + dy * dy;
                d2 <= r * r && d2 >= 0.25 * r * r
            }
        }
    }
}

/// A colour shapes are drawn in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Colour {
    /// Red.
    Red,
    /// Green.
    Green,
    /// Blue.
    Blue,
    /// Yellow.
    Yellow,
}

impl Colour {
    /// Every shape colour.
    pub const ALL: [Colour; 4] = [Colour::Red, Colour::Green, Colour::Blue, Colour::Yellow];

    /// The word used in captions.
    pub fn word(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
        }
    }

    /// The sRGB value it is drawn with.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 40, 40],
            Colour::Green => [40, 170, 70],
            Colour::Blue => [40, 80, 220],
            Colour::Yellow => [240, 210, 40],
        }
    }
}

/// A plain background.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Background {
    /// Near-white.
    White,
    /// Near-black.
    Black,
}

impl Background {
    /// Every background.
    pub const ALL: [Background; 2] = [Background::White, Background::Black];

    /// The word used in captions.
    pub fn word(self) -> &'static str {
        match self {
            Background::White => "white",
            Background::Black => "black",
        }
    }

    /// The sRGB value it is drawn with.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Background::White => [245, 245, 245],
            Background::Black => [20, 20, 25],
        }
    }
}

/// One picture of the world.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scene {
    /// What is drawn.
    pub shape: Shape,
    /// Its colour.
    pub colour: Colour,
    /// The plain background.
    pub background: Background,
    /// Centre, in pixels from the left.
    pub cx: f32,
    /// Centre, in pixels from the top.
    pub cy: f32,
    /// Half-extent in pixels (a circle's radius).
    pub radius: f32,
}

/// Smallest and largest half-extent drawn, in pixels.
pub const RADIUS_RANGE: (f32, f32) = (13.0, 21.0);
/// How far the centre may move from the image centre, in pixels, on each axis.
pub const CENTRE_JITTER: f32 = 7.0;

impl Scene {
    /// A random scene of `shape` (uniform colour, background, size and position).
    pub fn random_with(shape: Shape, rng: &mut SeededRng) -> Self {
        let colour = Colour::ALL[rng.below(0, Colour::ALL.len())];
        let background = Background::ALL[rng.below(0, Background::ALL.len())];
        let [u_r, u_x, u_y] = rng.uniform(3, 0.0, 1.0)[..] else {
            unreachable!("three draws")
        };
        let centre = IMAGE_SIZE as f32 / 2.0;
        Self {
            shape,
            colour,
            background,
            cx: centre + (2.0 * u_x - 1.0) * CENTRE_JITTER,
            cy: centre + (2.0 * u_y - 1.0) * CENTRE_JITTER,
            radius: RADIUS_RANGE.0 + u_r * (RADIUS_RANGE.1 - RADIUS_RANGE.0),
        }
    }

    /// A random scene of the base world (one of [`Shape::BASE`]).
    pub fn random(rng: &mut SeededRng) -> Self {
        let shape = Shape::BASE[rng.below(0, Shape::BASE.len())];
        Self::random_with(shape, rng)
    }

    /// "a red circle on a white background".
    pub fn caption(&self) -> String {
        caption(self.colour, self.shape, self.background)
    }

    /// Rasterises the scene at [`IMAGE_SIZE`], anti-aliased by supersampling.
    pub fn render(&self) -> RgbImage {
        let fg = self.colour.rgb().map(f32::from);
        let bg = self.background.rgb().map(f32::from);
        let n = SUPERSAMPLE * SUPERSAMPLE;
        RgbImage::from_fn(IMAGE_SIZE, IMAGE_SIZE, |x, y| {
            let mut inside = 0u32;
            for sy in 0..SUPERSAMPLE {
                for sx in 0..SUPERSAMPLE {
                    let px = x as f32 + (sx as f32 + 0.5) / SUPERSAMPLE as f32;
                    let py = y as f32 + (sy as f32 + 0.5) / SUPERSAMPLE as f32;
                    if self.shape.contains(px - self.cx, py - self.cy, self.radius) {
                        inside += 1;
                    }
                }
            }
            let a = inside as f32 / n as f32;
            Rgb(std::array::from_fn(|c| {
                (fg[c] * a + bg[c] * (1.0 - a)).round() as u8
            }))
        })
    }
}

/// The caption of a scene: "a red circle on a white background".
pub fn caption(colour: Colour, shape: Shape, background: Background) -> String {
    format!(
        "a {} {} on a {} background",
        colour.word(),
        shape.word(),
        background.word()
    )
}

/// The seeded stream of base-world scenes: scene `i` of seed `s` is the same on every machine.
#[derive(Debug, Clone)]
pub struct World {
    rng: SeededRng,
}

impl World {
    /// The world of `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: SeededRng::new(seed, Stream::World),
        }
    }

    /// The next base-world scene.
    pub fn next_scene(&mut self) -> Scene {
        Scene::random(&mut self.rng)
    }
}
