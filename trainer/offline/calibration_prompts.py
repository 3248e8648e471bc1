"""The built-in calibration prompts: what ``barp-trainer calibrate`` embeds without a ``--prompts`` file.

Owns a fixed, version-controlled list of prompts shaped like the shipped policy's training tasks (science
multiple choice, short Python functions, pronoun resolution) and everyday requests, so the shipped policy's
calibration set (barp_sidecar/policies/routerbench-11/calibration.safetensors, ``make builtin-calibration``)
is reproducible from this file and the shipped encoder alone. Knows nothing about encoders or files.
"""

from __future__ import annotations

BUILTIN_CALIBRATION_PROMPTS: tuple[str, ...] = (
    # Science multiple choice (arc_challenge-like).
    "Which property of a mineral can be determined just by looking at it? (A) luster (B) mass (C) weight "
    "(D) hardness",
    "A student mixes baking soda and vinegar and observes bubbles. What kind of change is this? (A) physical "
    "(B) chemical (C) nuclear (D) none",
    "Which organ pumps blood through the human body? (A) lungs (B) liver (C) heart (D) kidneys",
    "What causes the seasons on Earth? (A) distance from the Sun (B) the tilt of Earth's axis (C) the Moon's "
    "phases (D) ocean currents",
    "Which form of energy does a stretched rubber band store? (A) thermal (B) elastic potential (C) chemical "
    "(D) sound",
    "Plants make their food through which process? (A) respiration (B) digestion (C) photosynthesis "
    "(D) fermentation",
    "A ball rolls down a ramp faster each second. Which force causes this? (A) friction (B) magnetism "
    "(C) gravity (D) tension",
    "Which layer of the Earth is liquid? (A) crust (B) mantle (C) outer core (D) inner core",
    "Why do metals feel cold to the touch at room temperature? (A) they are colder than air (B) they "
    "conduct heat away from the hand (C) they reflect light (D) they are dense",
    "Which of these is a renewable resource? (A) coal (B) natural gas (C) wind (D) oil",
    "An animal with feathers and hollow bones is most likely a (A) mammal (B) reptile (C) bird (D) fish",
    "Which tool best measures the volume of a liquid? (A) balance (B) graduated cylinder (C) ruler "
    "(D) thermometer",
    # Short Python functions (mbpp-like).
    "Write a Python function to find the maximum of three numbers.",
    "Write a function that returns True if a string is a palindrome, ignoring case.",
    "Write a Python function to count the vowels in a given string.",
    "Write a function to merge two sorted lists into one sorted list.",
    "Write a Python function that returns the n-th Fibonacci number using iteration.",
    "Write a function to remove duplicate elements from a list while keeping their order.",
    "Write a Python function to check whether a number is prime.",
    "Write a function that flattens a nested list of integers.",
    "Write a Python function to compute the greatest common divisor of two integers.",
    "Write a function to find the second largest number in a list.",
    "Write a Python function that reverses the words in a sentence.",
    "Write a function to convert a decimal number to its binary representation as a string.",
    # Pronoun and commonsense resolution (winogrande-like).
    "The trophy doesn't fit into the brown suitcase because the _ is too large. Option 1: trophy. "
    "Option 2: suitcase.",
    "Sarah lent her umbrella to Maria because _ was going out in the rain. Option 1: Sarah. Option 2: Maria.",
    "The cake burned in the oven because the _ was set too high. Option 1: timer. Option 2: temperature.",
    "John could not lift the box onto the shelf because the _ was too heavy. Option 1: box. Option 2: shelf.",
    "The plant died on the windowsill but thrived in the garden because the _ got more rain. Option 1: "
    "windowsill. Option 2: garden.",
    "Emma finished the marathon before Rachel because _ trained harder. Option 1: Emma. Option 2: Rachel.",
    "The ice melted faster in the cup than in the bowl because the _ was in the sun. Option 1: cup. "
    "Option 2: bowl.",
    "Kevin asked Brian for directions because _ was new in town. Option 1: Kevin. Option 2: Brian.",
    # Everyday requests (chat traffic).
    "Summarise the plot of Romeo and Juliet in three sentences.",
    "Translate 'Where is the train station?' into French and Spanish.",
    "Give me a packing list for a three-day hiking trip.",
    "Explain the difference between a virus and a bacterium to a ten-year-old.",
    "Draft a polite email asking my landlord to fix a leaking tap.",
    "What are the pros and cons of remote work?",
    "Suggest five names for a small coffee shop near a university.",
    "How do I make a simple tomato pasta sauce?",
    "Explain what a hash table is and when to use one.",
    "Write a haiku about autumn leaves.",
    "What is the capital of Australia, and why is it not Sydney?",
    "Compare SQL and NoSQL databases in a short table.",
    "Solve for x: 3x + 7 = 22.",
    "A train travels 120 km in 1.5 hours. What is its average speed in km/h?",
    "Prove that the sum of two even numbers is even.",
    "Explain the central limit theorem in plain language.",
    "Write a regular expression that matches an email address.",
    "Debug this code: for i in range(10) print(i)",
    "Explain how HTTPS keeps data private between a browser and a server.",
    "Write a short story opening set on a space station.",
    "What should I consider when choosing between renting and buying a home?",
    "List three strategies to improve sleep quality.",
    "Explain the difference between supervised and unsupervised learning.",
    "Rewrite this sentence to be more formal: gonna need that report asap.",
    "Write a SQL query that returns the ten customers with the highest total order value.",
    "What is the time complexity of binary search, and why?",
    "Give a brief history of the printing press.",
    "How can a small team run effective weekly meetings?",
    "Explain recursion with an example in JavaScript.",
    "What are the main causes of inflation?",
    "Generate three quiz questions about the solar system.",
    "Describe the water cycle step by step.",
    "hi",
    "Thanks, that helped!",
)
