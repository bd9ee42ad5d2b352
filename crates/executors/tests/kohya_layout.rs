//! The dataset laid out for sd-scripts in a temporary directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use loraflow_executors::Labels;
use loraflow_executors::kohya::Error;
use loraflow_executors::kohya::layout::{folder_name, write_layout};
use loraflow_executors::label::{CaptionSource, ImageLabel};

fn write(root: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = root.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, data).unwrap();
    path
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels {
        images: pairs
            .iter()
            .map(|(name, caption)| {
                (
                    (*name).to_owned(),
                    ImageLabel {
                        caption: (*caption).to_owned(),
                        tags: vec![],
                        source: CaptionSource::Sidecar,
                    },
                )
            })
            .collect(),
        tag_frequency: BTreeMap::new(),
    }
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn images_and_captions_land_in_the_repeats_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("dataset");
    let files = vec![
        write(&root, "a.png", b"png a"),
        write(&root, "a.txt", b"corgi, hat\n"),
        write(&root, "a.jpg", b"jpeg a"),
        write(&root, "b.jpg", b"jpeg b"),
        write(&root, "blank.png", b"png blank"),
        write(&root, "blank.txt", b"  \n"),
        write(&root, "sub/c.webp", b"webp c"),
        write(&root, "sub/c.caption", b"corgi,\r\nrunning\n"),
        write(&root, "notes.pdf", b"%PDF"),
        write(&root, "labels.json", b"{}"),
    ];
    let labels = labels(&[
        ("b.jpg", "sks, corgi on grass"),
        ("a.jpg", "sks, corgi\nsleeping"),
        ("gone.png", "sks"),
    ]);
    let train = tmp.path().join("train");
    let layout = write_layout(&root, &files, Some(&labels), &train, 10, "corgi dog!").unwrap();

    assert_eq!(layout.image_dir, train.join("10_corgi_dog"));
    let mut placed: Vec<String> = std::fs::read_dir(&layout.image_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    placed.sort();
    // a.jpg and a.png would share a.txt, so the second gets its own stem.
    assert_eq!(
        placed,
        [
            "a-2.png",
            "a-2.txt",
            "a.jpg",
            "a.txt",
            "b.jpg",
            "b.txt",
            "blank.png",
            "sub__c.txt",
            "sub__c.webp"
        ]
    );
    let dir = &layout.image_dir;
    assert_eq!(
        read(dir.join("a.txt")),
        "sks, corgi sleeping\n",
        "labels win"
    );
    assert_eq!(
        read(dir.join("a-2.txt")),
        "corgi, hat\n",
        "else the sidecar"
    );
    assert_eq!(read(dir.join("b.txt")), "sks, corgi on grass\n");
    assert_eq!(read(dir.join("sub__c.txt")), "corgi, running\n", "one line");
    assert_eq!(std::fs::read(dir.join("a-2.png")).unwrap(), b"png a");

    assert_eq!(layout.images, 5);
    assert_eq!((layout.from_labels, layout.from_sidecars), (2, 2));
    // sd-scripts refuses an empty caption file; the image trains on the class tokens.
    assert_eq!(layout.uncaptioned, ["blank.png"]);
    assert_eq!(layout.skipped, ["notes.pdf"]);
    assert_eq!(layout.unused_labels, ["gone.png"]);
}

#[test]
fn a_dataset_without_images_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("dataset");
    let files = vec![write(&root, "notes.pdf", b"%PDF")];
    let err = write_layout(&root, &files, None, &tmp.path().join("train"), 1, "x").unwrap_err();
    assert!(
        matches!(&err, Error::Dataset(m) if m.contains("no images")),
        "{err}"
    );
}

#[test]
fn folder_names_are_safe_path_components() {
    assert_eq!(folder_name(10, "corgi"), "10_corgi");
    assert_eq!(folder_name(3, "../../etc"), "3_etc");
    assert_eq!(folder_name(1, "  "), "1_subject");
    assert_eq!(folder_name(2, "Ünïcode sub-ject"), "2_Ünïcode_sub-ject");
}
